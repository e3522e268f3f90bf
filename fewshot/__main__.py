"""``python -m fewshot``: the same CLI as the ``fewshot`` command."""

from fewshot.cli import app

app()
