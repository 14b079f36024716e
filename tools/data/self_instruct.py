"""Convert the human-written tasks of yizhongw/self-instruct to grit's generative JSON lines.

    python tools/data/self_instruct.py /work/.mirror/yizhongw+self-instruct/repo data/instructions

Reads two files from a snapshot (git object store, no work tree needed) of https://github.com/yizhongw/self-instruct:
``data/seed_tasks.jsonl`` (175 seed tasks) and ``human_eval/user_oriented_instructions.jsonl`` (252 expert-written
user-oriented tasks). Both were written by people, not generated. Every task has one instance; a row is

    {"id": "seed_task_0", "source": "self-instruct/seed", "text": [prompt, output]}

where the prompt is the instruction, then a blank line and the instance input when there is one. Deterministic: the
rows come in file order, and ``grit.splits`` holds out 20% of them by ``id``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

FILES = {
    "data/seed_tasks.jsonl": "self-instruct/seed",
    "human_eval/user_oriented_instructions.jsonl": "self-instruct/user-oriented",
}
OUTPUT = "self_instruct_human.jsonl"


def git_show(repo: Path, path: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", str(repo), "show", f"HEAD:{path}"], check=True, capture_output=True, text=True
    ).stdout


def convert(repo: Path) -> list[dict]:
    rows = []
    for path, source in FILES.items():
        for line in git_show(repo, path).splitlines():
            if not line.strip():
                continue
            task = json.loads(line)
            for k, instance in enumerate(task["instances"]):
                prompt = task["instruction"].strip()
                if instance["input"].strip():
                    prompt += "\n\n" + instance["input"].strip()
                row_id = task["id"] if len(task["instances"]) == 1 else f"{task['id']}-{k}"
                rows.append({"id": row_id, "source": source, "text": [prompt, instance["output"].strip()]})
    return rows


def main(repo: str, out_dir: str) -> None:
    repo_path = Path(repo)
    git_dir = repo_path / ".git" if (repo_path / ".git").is_dir() else repo_path
    rows = convert(git_dir)
    out = Path(out_dir) / OUTPUT
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{out}: {len(rows)} rows")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(*sys.argv[1:])
