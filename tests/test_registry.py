"""The registry: lazy built-ins, entry-point plugins, file targets, helpful errors."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fewshot.methods import METHODS, get_method
from fewshot.methods.base import Adapter
from fewshot.registry import Registry
from fewshot.types import ConfigError

from .conftest import EXAMPLE_PLUGIN, write_distribution

EXAMPLE = EXAMPLE_PLUGIN.parent


def _install_fake_distribution(site: Path, dist: str, entry_points: dict[str, str], module_dir: Path) -> None:
    write_distribution(site, dist, entry_points, module_dir if module_dir.exists() else None)


def test_builtins_are_lazy_and_listed() -> None:
    names = METHODS.names()
    assert {"zeroshot", "linear-probe", "coop"} <= set(names)
    assert METHODS.origin("coop").kind == "builtin"


def test_unknown_method_suggests_close_names() -> None:
    with pytest.raises(ConfigError, match="Did you mean coop"):
        get_method("cop")


def test_entry_point_plugin_is_discovered_with_its_distribution(plugin_site: Path) -> None:
    _install_fake_distribution(
        plugin_site,
        "fewshot-prototype",
        {"prototype": "fewshot_prototype:Prototypes"},
        EXAMPLE / "fewshot_prototype",
    )
    cls = get_method("prototype")
    assert issubclass(cls, Adapter) and cls.__name__ == "Prototypes"
    origin = METHODS.origin("prototype")
    assert (origin.kind, origin.distribution, origin.version) == ("plugin", "fewshot-prototype", "0.1.0")


def test_plugin_cannot_shadow_a_builtin(plugin_site: Path) -> None:
    _install_fake_distribution(
        plugin_site, "evil-plugin", {"coop": "fewshot_prototype:Prototypes"}, EXAMPLE / "fewshot_prototype"
    )
    with pytest.warns(UserWarning, match="evil-plugin"):
        names = METHODS.names()
    assert "coop" in names
    assert METHODS.origin("coop").kind == "builtin"


def test_two_plugins_with_one_name_is_an_error(plugin_site: Path) -> None:
    for dist in ("plugin-a", "plugin-b"):
        _install_fake_distribution(
            plugin_site, dist, {"proto": "fewshot_prototype:Prototypes"}, EXAMPLE / "fewshot_prototype"
        )
    with pytest.raises(ConfigError, match=r"plugin-a.*plugin-b|plugin-b.*plugin-a"):
        METHODS.names()


def test_broken_plugin_fails_alone(plugin_site: Path) -> None:
    _install_fake_distribution(plugin_site, "broken-plugin", {"broken": "no_such:Thing"}, Path("/none"))
    with pytest.raises(ConfigError, match="broken-plugin"):
        get_method("broken")
    # one broken plugin does not disable the group or the built-ins
    assert {"broken", "coop"} <= set(METHODS.names())
    assert METHODS.origin("coop").kind == "builtin"


def test_file_target(tmp_path: Path) -> None:
    cls = get_method(f"{EXAMPLE / 'fewshot_prototype' / '__init__.py'}:Prototypes")
    assert cls.__name__ == "Prototypes"
    bad = tmp_path / "bad.py"
    bad.write_text(textwrap.dedent("class NotAnAdapter:\n    pass\n"))
    with pytest.raises(ConfigError, match="not a subclass of Adapter"):
        get_method(f"{bad}:NotAnAdapter")
    with pytest.raises(ConfigError, match="does not exist"):
        get_method(f"{tmp_path / 'missing.py'}:X")
    with pytest.raises(ConfigError, match="Did you mean NotAnAdapter"):
        get_method(f"{bad}:NotAnAdapte")


def test_registry_with_objects_and_duplicates() -> None:
    reg: Registry[type] = Registry("thing")
    reg.register("a", "fewshot.types:Item")
    assert reg.get("a").__name__ == "Item"
    with pytest.raises(ConfigError, match="registered twice"):
        reg.register("a", "fewshot.types:Split")
    reg.register("b", "fewshot.nothing_here:X")
    with pytest.raises(ConfigError, match="Cannot load thing 'b'"):
        reg.get("b")
