"""Class descriptions: sets of sentences per class name, with provenance and a content hash.

A :class:`DescriptionSet` maps each class name to its sentences (LLM descriptions, synonyms,
or the toy world's own). Methods that classify with language knowledge declare which kinds
they need in ``Adapter.knowledge`` and name the set in their config field of the same name
(``config.descriptions``, ``config.synonyms``); the runner loads the named set for the run's
dataset (:mod:`.wiring`) and hands it over in ``FitContext`` and ``QueryBatch``. The content
hash enters every record made with a set, so runs with different sets never average together.

Where sets come from (:mod:`.files`): ``$FEWSHOT_DATA/descriptions/<dataset>/<name>.json``,
in fewshot's own format or as the published ``{class: [sentences]}`` files (DCLIP, CuPL,
ProAPO), with the file's class names matched to the dataset's; the toy world's sets, named
``toy``, are built in code (:mod:`.toy`).
"""

from fewshot.descriptions.files import (
    FORMAT_VERSION,
    list_description_sets,
    load_description_set,
    match_classes,
    read_description_file,
    save_description_set,
    set_path,
    sets_dir,
)
from fewshot.descriptions.sets import KINDS, DescriptionsError, DescriptionSet, MissingDescriptionsError

__all__ = [
    "FORMAT_VERSION",
    "KINDS",
    "DescriptionSet",
    "DescriptionsError",
    "MissingDescriptionsError",
    "list_description_sets",
    "load_description_set",
    "match_classes",
    "read_description_file",
    "save_description_set",
    "set_path",
    "sets_dir",
]
