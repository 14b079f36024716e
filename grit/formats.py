"""Prompt formats: the one place that says how text becomes model input.

A GRIT model tells embedding from generation by its input format alone (GritLM, Muennighoff et al. 2024):

    embedding   <|user|>\\n{instruction}\\n<|embed|>\\n{text}      (or <|embed|>\\n{text} with no instruction)
    generation  <|user|>\\n{prompt}\\n<|assistant|>\\n{answer}</s>

Generation uses the tokenizer's own chat template when it has one (so an instruct model answers well before any GRIT
training); ``chat="grit"`` forces GritLM's format instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from grit.text import check_text

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class PromptFormat:
    """How instructions, texts and chat turns are laid out. Change it here and every caller follows."""

    embed_with_instruction: str = "<|user|>\n{instruction}\n<|embed|>\n"
    embed_without_instruction: str = "<|embed|>\n"
    user_turn: str = "<|user|>\n{content}\n"
    assistant_turn: str = "<|assistant|>\n"
    chat: Literal["auto", "template", "grit"] = "auto"  # auto: tokenizer template when it has one, else grit

    def __post_init__(self) -> None:
        if "{instruction}" not in self.embed_with_instruction:
            raise ValueError(f"embed_with_instruction needs '{{instruction}}', got {self.embed_with_instruction!r}")
        if "{content}" not in self.user_turn:
            raise ValueError(f"user_turn must contain '{{content}}', got {self.user_turn!r}")
        if self.chat not in ("auto", "template", "grit"):
            raise ValueError(f"chat must be 'auto', 'template' or 'grit', got {self.chat!r}")

    def embed_prefix(self, instruction: str = "") -> str:
        """The part before the text; its tokens are excluded from pooling (GritLM's instruction masking)."""
        if instruction:
            return self.embed_with_instruction.format(instruction=instruction)
        return self.embed_without_instruction

    def grit_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True, eos: str = "</s>") -> str:
        """GritLM's generation format. A system message is folded into the first user turn (GritLM has no system).

        An assistant turn ends with ``eos``: GritLM's ``</s>`` is Mistral's end token; for another tokenizer it
        must be that tokenizer's own end token, or the model never learns a token that stops generation.
        """
        parts: list[str] = []
        system = ""
        for m in messages:
            if m["role"] == "system":
                system = m["content"] + "\n"
            elif m["role"] == "user":
                parts.append(self.user_turn.format(content=system + m["content"]))
                system = ""
            else:
                parts.append(self.assistant_turn + m["content"] + eos)
        if add_generation_prompt:
            parts.append(self.assistant_turn)
        return "".join(parts)


def as_messages(prompt_or_messages: str | Sequence[Message]) -> list[Message]:
    """A prompt string becomes one user message; a message list is checked and copied."""
    if isinstance(prompt_or_messages, str):
        return [{"role": "user", "content": check_text(prompt_or_messages, "prompt")}]
    if not isinstance(prompt_or_messages, Sequence) or not prompt_or_messages:
        got = type(prompt_or_messages).__name__
        raise TypeError(f"expected a prompt string or a non-empty list of messages, got {got}")
    messages = []
    for i, m in enumerate(prompt_or_messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise TypeError(f"message {i} content must be a string, got {type(m['content']).__name__}")
        check_text(m["content"], f"message {i} content")
        messages.append({"role": m["role"], "content": m["content"]})
    return messages
