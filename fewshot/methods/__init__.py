"""Built-in methods, registered lazily: nothing is imported until a method is used.

Outside methods come from the ``fewshot.methods`` entry-point group or from
``--method path/to/file.py:ClassName`` (see fewshot.registry).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fewshot.registry import Registry

if TYPE_CHECKING:
    from fewshot.methods.base import Adapter

__all__ = ["METHODS", "get_method", "list_methods"]


def _adapter_base() -> type:
    from fewshot.methods.base import Adapter

    return Adapter


class _MethodRegistry(Registry["type[Adapter]"]):
    """The method registry checks subclasses of Adapter, imported only when needed."""

    def _check(self, name: str, obj: object) -> type[Adapter]:
        self.base = _adapter_base()
        return super()._check(name, obj)


METHODS = _MethodRegistry("method", group="fewshot.methods")

# One line per built-in method; needs/novel let `fewshot list methods` answer without
# importing torch (tests/test_methods_contract.py keeps them equal to the classes').
METHODS.register("zeroshot", "fewshot.methods.zeroshot:ZeroShot", needs="features", novel="yes")
METHODS.register("linear-probe", "fewshot.methods.linear_probe:LinearProbe", needs="features", novel="no")
METHODS.register("coop", "fewshot.methods.coop:CoOp", needs="features", novel="yes")
METHODS.register("ivlp", "fewshot.methods.ivlp:IVLP", needs="images", novel="yes")
METHODS.register("maple", "fewshot.methods.maple:MaPLe", needs="images", novel="yes")
METHODS.register("promptsrc", "fewshot.methods.promptsrc:PromptSRC", needs="images", novel="yes")
METHODS.register("cocoop", "fewshot.methods.cocoop:CoCoOp", needs="features", novel="yes")
METHODS.register("kgcoop", "fewshot.methods.kgcoop:KgCoOp", needs="features", novel="yes")
METHODS.register("dclip", "fewshot.methods.dclip:DCLIP", needs="features", novel="yes")
METHODS.register("cupl", "fewshot.methods.cupl:CuPL", needs="features", novel="yes")
METHODS.register("proapo", "fewshot.methods.proapo:ProAPO", needs="features", novel="yes")
METHODS.register("gist", "fewshot.methods.gist:Gist", needs="images", novel="no")
METHODS.register("tip-adapter", "fewshot.methods.tip_adapter:TipAdapter", needs="features", novel="no")
METHODS.register("tip-adapter-f", "fewshot.methods.tip_adapter_f:TipAdapterF", needs="features", novel="no")
METHODS.register("sgva-clip", "fewshot.methods.sgva:SgVA", needs="features", novel="yes")
METHODS.register("clip-adapter", "fewshot.methods.clip_adapter:ClipAdapter", needs="features", novel="yes")
METHODS.register("clap", "fewshot.methods.clap:Clap", needs="features", novel="no")
METHODS.register("lp++", "fewshot.methods.lp_plus_plus:LPPlusPlus", needs="features", novel="no")
METHODS.register("desco", "fewshot.methods.desco:DesCo", needs="features", novel="yes")
METHODS.register("desco-zs", "fewshot.methods.desco:DesCoZS", needs="features", novel="yes")


def get_method(name: str) -> type[Adapter]:
    """The Adapter class for a registered name or a ``file.py:Class`` target."""
    return METHODS.get(name)


def list_methods() -> list[str]:
    return METHODS.names()
