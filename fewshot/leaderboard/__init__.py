"""The leaderboard: a pure function from result records to tables, CSV and Markdown.

``build_leaderboard(results_dir)`` reads every record (``fewshot.results.load_records``) and
aggregates seeds into cells; ``write_leaderboard(lb, out_dir)`` writes ``leaderboard.csv``
(the long, numeric form: one row per cell) and ``LEADERBOARD.md`` (views of it), and with
``formats`` also ``leaderboard.html`` (:mod:`.html`: tables and :mod:`.plots`, one
self-contained page) and ``leaderboard.tex`` (:mod:`.latex`: booktabs tables); both render
the numeric grids of :mod:`.grids`. Nothing here trains or reads logs; the same records
always give byte-identical files.

Conventions (docs/methods.md#evaluation-protocols):

- a cell is (protocol, backbone, method variant, shots, dataset, label space); its seeds
  aggregate to mean, population std and 95% CI = 1.96·std/√n (fewshot.metrics.aggregate);
- the few-shot "Average" is the unweighted mean of per-dataset means, given only where the
  method has every dataset of its table;
- base-to-novel HM per dataset is the HM of the seed means; the "Average" row's HM is the
  HM of the averaged base and averaged novel accuracies (the mean of per-dataset HMs is
  kept beside it, as the other convention found in papers);
- cross-dataset and domain-generalization spaces are target datasets; "mean" is the mean
  over every target of the table;
- a space the method cannot classify (novel classes for a linear probe) is "n/a", never 0;
- failed runs are listed, never averaged; runs whose dataset version, split hash or method
  version differ are never averaged together: each version group is its own cell, marked
  as a conflict, and a conflicted cell blocks the averages that would need it.
"""

from fewshot.leaderboard.cells import CELL_COLUMNS
from fewshot.leaderboard.render import summary_table, to_markdown, write_leaderboard
from fewshot.leaderboard.tables import Leaderboard, build_leaderboard
from fewshot.reported import REPORTED_COLUMNS, read_reported

__all__ = [
    "CELL_COLUMNS",
    "REPORTED_COLUMNS",
    "Leaderboard",
    "build_leaderboard",
    "read_reported",
    "summary_table",
    "to_markdown",
    "write_leaderboard",
]
