"""Embedding instructions: GritLM's per-MTEB-task "e5" set (used by GritLM-7B for its MTEB results), reachable
from ``GritModel.encode_query(texts, task=...)``, and the default query instruction for retrieval.

Source: ContextualAI/gritlm ``evaluation/eval_mteb.py`` (``SET_TO_TASK_TO_DS_TO_PROMPT["e5"]``), which took them from
microsoft/unilm ``e5/utils.py``; kept verbatim, typos included, since these strings are what the models saw.
Retrieval tasks give the query its instruction and documents none (``corpus: ""``), as GritLM does; symmetric tasks
(STS, classification, clustering) use one instruction for every text.
"""

from __future__ import annotations

Instruction = str | dict[str, str]  # one for all texts, or {"query": ..., "corpus": ...}

STS = "Retrieve semantically similar text."
DEFAULT_QUERY_INSTRUCTION = "Given a question, retrieve passages that answer the question"  # GritLM's, for RAG

GRITLM_E5: dict[str, Instruction] = {
    # Classification
    "AmazonCounterfactualClassification": "Classify a given Amazon customer review text as either counterfactual or "
    "not-counterfactual",
    "AmazonPolarityClassification": "Classify Amazon reviews into positive or negative sentiment",
    "AmazonReviewsClassification": "Classify the given Amazon review into its appropriate rating category",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "EmotionClassification": "Classify the emotion expressed in the given Twitter message into one of the six "
    "emotions: anger, fear, joy, love, sadness, and surprise",
    "ImdbClassification": "Classify the sentiment expressed in the given movie review text from the IMDB dataset",
    "MassiveIntentClassification": "Given a user utterance as query, find the user intents",
    "MassiveScenarioClassification": "Given a user utterance as query, find the user scenarios",
    "MTOPDomainClassification": "Classify the intent domain of the given utterance in task-oriented conversation",
    "MTOPIntentClassification": "Classify the intent of the given utterance in task-oriented conversation",
    "ToxicConversationsClassification": "Classify the given comments as either toxic or not toxic",
    "TweetSentimentExtractionClassification": "Classify the sentiment of a given tweet as either positive, negative, "
    "or neutral",
    # Clustering
    "ArxivClusteringP2P": "Identify the main and secondary category of Arxiv papers based on the titles and abstracts",
    "ArxivClusteringS2S": "Identify the main and secondary category of Arxiv papers based on the titles",
    "BiorxivClusteringP2P": "Identify the main category of Biorxiv papers based on the titles and abstracts",
    "BiorxivClusteringS2S": "Identify the main category of Biorxiv papers based on the titles",
    "MedrxivClusteringP2P": "Identify the main category of Medrxiv papers based on the titles and abstracts",
    "MedrxivClusteringS2S": "Identify the main category of Medrxiv papers based on the titles",
    "RedditClustering": "Identify the topic or theme of Reddit posts based on the titles",
    "RedditClusteringP2P": "Identify the topic or theme of Reddit posts based on the titles and posts",
    "StackExchangeClustering": "Identify the topic or theme of StackExchange posts based on the titles",
    "StackExchangeClusteringP2P": "Identify the topic or theme of StackExchange posts based on the given paragraphs",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    # Pair classification
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "TwitterURLCorpus": "Retrieve tweets that are semantically similar to the given tweet",
    # Reranking (both sides instructed)
    "AskUbuntuDupQuestions": {"query": "Retrieve duplicate questions from AskUbuntu forum",
                              "corpus": "Retrieve duplicate questions from AskUbuntu forum"},
    "MindSmallReranking": {"query": "Retrieve relevant news articles based on user browsing history",
                           "corpus": "Retrieve relevant news articles based on user browsing history"},
    "SciDocsRR": {"query": "Given a title of a scientific paper, retrieve the titles of other relevant papers",
                  "corpus": "Given a title of a scientific paper, retrieve the titles of other relevant papers"},
    "StackOverflowDupQuestions": {"query": "Retrieve duplicate questions from StackOverflow forum",
                                  "corpus": "Retrieve duplicate questions from StackOverflow forum"},
    # Retrieval (documents uninstructed)
    "ArguAna": {"query": "Given a claim, find documents that refute the claim", "corpus": ""},
    "ClimateFEVER": {"query": "Given a claim about climate change, retrieve documents that support or refute the "
                     "claim", "corpus": ""},
    "CQADupstackRetrieval": {"query": "Given a question, retrieve detailed question descriptions from Stackexchange "
                             "that are duplicates to the given question", "corpus": ""},
    "DBPedia": {"query": "Given a query, retrieve relevant entity descriptions from DBPedia", "corpus": ""},
    "FEVER": {"query": "Given a claim, retrieve documents that support or refute the claim", "corpus": ""},
    "FiQA2018": {"query": "Given a financial question, retrieve user replies that best answer the question",
                 "corpus": ""},
    "HotpotQA": {"query": "Given a multi-hop question, retrieve documents that can help answer the question",
                 "corpus": ""},
    "MSMARCO": {"query": "Given a web search query, retrieve relevant passages that answer the query", "corpus": ""},
    "NFCorpus": {"query": "Given a question, retrieve relevant documents that best answer the question", "corpus": ""},
    "NQ": {"query": "Given a question, retrieve Wikipedia passages that answer the question", "corpus": ""},
    "QuoraRetrieval": {"query": "Given a question, retrieve questions that are semantically equivalent to the given "
                       "question", "corpus": ""},
    "SCIDOCS": {"query": "Given a scientific paper title, retrieve paper abstracts that are cited by the given paper",
                "corpus": ""},
    "SciFact": {"query": "Given a scientific claim, retrieve documents that support or refute the claim",
                "corpus": ""},
    "Touche2020": {"query": "Given a question, retrieve detailed and persuasive arguments that answer the question",
                   "corpus": ""},
    "TRECCOVID": {"query": "Given a query on COVID-19, retrieve documents that answer the query", "corpus": ""},
    # STS
    **{name: STS for name in ("STS12", "STS13", "STS14", "STS15", "STS16", "STS17", "STS22", "BIOSSES", "SICK-R",
                              "STSBenchmark")},
    # Summarization
    "SummEval": "Given a news summary, retrieve other semantically similar summaries",
}  # fmt: skip

# Our shared data sets, by the MTEB task whose instruction they use.
SST2 = "Classify the sentiment expressed in the given movie review text"  # ImdbClassification's, minus "from IMDB"
CRANFIELD = GRITLM_E5["NFCorpus"]  # Cranfield has no GritLM instruction; NFCorpus's is the closest generic QA one


def for_task(task: str, which: str) -> str:
    """The instruction of MTEB task ``task`` for ``which`` side ("query" or "corpus"); an unknown task name is a
    ValueError that suggests the closest known ones."""
    if task not in GRITLM_E5:
        import difflib

        close = difflib.get_close_matches(task, GRITLM_E5, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" ({len(GRITLM_E5)} MTEB tasks known)"
        raise ValueError(f"no GritLM instruction for task {task!r}{hint}")
    return side(GRITLM_E5[task], which)


def side(instruction: Instruction, which: str) -> str:
    """The instruction for ``which`` side ("query" or "corpus"): the one string, or its entry ("" when absent)."""
    if which not in ("query", "corpus"):
        raise ValueError(f"which must be 'query' or 'corpus', got {which!r}")
    return instruction if isinstance(instruction, str) else instruction.get(which, "")
