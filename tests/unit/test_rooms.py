# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/rooms.py on small made-up sources: each limit (module lines,
class methods, function lines) fails one past it, passes at it, and passes
past it with a `# rooms: <reason>` beside it."""
import importlib.util
import json
import os

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                      "scripts", "rooms.py")
spec = importlib.util.spec_from_file_location("rooms", SCRIPT)
rooms = importlib.util.module_from_spec(spec)
spec.loader.exec_module(rooms)


def cls(methods, above="", on=""):
    body = "".join(f"    def m{i}(self):\n        pass\n" for i in range(methods))
    return f"{above}class Big:{on}\n{body}"


def func(lines, above="", on="", decorators=0):
    """A function of `lines` lines from its def to its last line."""
    deco = "@staticmethod\n" * decorators
    return f"{above}{deco}def long():{on}\n" + "    x = 1\n" * (lines - 1)


def test_a_class_of_26_methods_fails():
    room = rooms.measure(cls(26), "m.py")
    assert room.violations == ["m.py: class Big methods: 26 > 25"]
    assert (room.biggest_class, room.methods) == ("Big", 26)


def test_a_class_of_25_methods_passes():
    assert rooms.measure(cls(25)).violations == []


@pytest.mark.parametrize("where", ["above", "on"])
def test_a_reason_beside_the_class_lets_it_pass(where):
    room = rooms.measure(cls(26, **{where: "# rooms: one table of commands\n" if where == "above"
                                    else "  # rooms: one table of commands"}), "m.py")
    assert room.violations == []
    assert room.excused == ["m.py: class Big methods: 26 > 25 (rooms: one table of commands)"]


def test_a_reason_must_say_something_and_stand_beside_it():
    assert rooms.measure(cls(26, above="# rooms:\n")).violations
    assert rooms.measure(cls(26, above="# rooms: far away\n\n")).violations


def test_a_reason_may_take_several_comment_lines():
    above = "# rooms: one table of commands,\n#   as wg.c's is\n"
    room = rooms.measure(cls(26, above=above), "m.py")
    assert room.excused == ["m.py: class Big methods: 26 > 25 (rooms: one table of commands, as wg.c's is)"]
    assert rooms.measure(func(81, above=above, decorators=2)).violations == []
    head = "# SPDX\n# rooms: the CLI's one table\n# of commands\n" + "x = 1\n" * 600
    assert rooms.measure(head, "m.py").excused == [
        "m.py: module lines: 603 > 600 (rooms: the CLI's one table of commands)"]


def test_nested_classes_count_apart():
    text = "class Outer:\n    def a(self):\n        pass\n" + "\n".join("    " + line for line in cls(26).splitlines())
    room = rooms.measure(text, "m.py")
    assert room.violations == ["m.py: class Outer.Big methods: 26 > 25"]  # Outer has 1 method


def test_an_81_line_function_fails_80_passes():
    room = rooms.measure(func(81), "m.py")
    assert room.violations == ["m.py: function long lines: 81 > 80"]
    assert (room.longest_function, room.function_lines) == ("long", 81)
    assert rooms.measure(func(80)).violations == []


def test_decorators_are_not_counted_and_a_reason_may_stand_above_them():
    assert rooms.measure(func(80, decorators=3)).violations == []
    assert rooms.measure(func(81, above="# rooms: a state machine\n", decorators=1)).violations == []
    assert rooms.measure(func(81, on="  # rooms: a state machine")).violations == []


def test_methods_and_nested_functions_are_measured():
    method = "class C:\n" + "".join("    " + line + "\n" for line in func(81).splitlines())
    assert rooms.measure(method, "m.py").violations == ["m.py: function C.long lines: 81 > 80"]
    nested = "def outer():\n" + "".join("    " + line + "\n" for line in func(81).splitlines())
    assert "m.py: function outer.long lines: 81 > 80" in rooms.measure(nested, "m.py").violations


def test_a_long_module_fails_unless_its_head_says_why():
    text = "x = 1\n" * 601
    assert rooms.measure(text, "m.py").violations == ["m.py: module lines: 601 > 600"]
    assert rooms.measure("x = 1\n" * 600).violations == []
    ok = "#!/usr/bin/env python3\n# SPDX\n'''doc'''\n\n# rooms: the CLI's one table\n" + text
    assert rooms.measure(ok).violations == []
    late = "#!/usr/bin/env python3\n# SPDX\n'''doc'''\n\n\n# rooms: too late\n" + text
    assert rooms.measure(late).violations


def test_main_exits_1_on_a_violation_with_a_table_and_json(tmp_path, capsys):
    (tmp_path / "good.py").write_text(cls(3) + func(10))
    assert rooms.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "good.py" in out and "no violations" in out
    (tmp_path / "bad.py").write_text(cls(26))
    assert rooms.main([str(tmp_path)]) == 1
    assert "violations (1):" in capsys.readouterr().out
    assert rooms.main(["--json", str(tmp_path)]) == 1
    got = json.loads(capsys.readouterr().out)
    assert [v.split(": ", 1)[1] for v in got["violations"]] == ["class Big methods: 26 > 25"]
    assert {r["path"].rsplit("/", 1)[1] for r in got["rooms"]} == {"bad.py", "good.py"}


def test_the_tree_keeps_its_rooms(capsys):
    """wgbpf/ itself: no module over 600 lines, no class over 25 methods,
    no function over 80 lines, but where a reason is written beside it."""
    tree = os.path.join(os.path.dirname(SCRIPT), "..", "wgbpf")
    assert rooms.main([tree]) == 0, capsys.readouterr().out
