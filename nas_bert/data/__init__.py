"""Text and tasks: the corpus a study distils on (shipped WordNet glosses, local files, Hub datasets) and the
downstream tasks it evaluates on; the shipped data files and their licences live beside these modules.
"""

from nas_bert.data.corpus import (
    LEXNAMES,
    WORDNET_PATH,
    CorpusError,
    StepBatcher,
    corpus_identity,
    fixed_batches,
    load_corpus,
    load_manpages,
    load_raw,
    load_wordnet_task,
    make_collator,
    padding_share,
    split_of,
)
from nas_bert.data.tasks import LOAD_ERRORS, first_line, load_task

__all__ = ["LEXNAMES", "LOAD_ERRORS", "WORDNET_PATH", "CorpusError", "StepBatcher", "corpus_identity", "first_line", "fixed_batches", "load_corpus", "load_manpages", "load_raw", "load_task", "load_wordnet_task", "make_collator", "padding_share", "split_of"]
