"""Every code example in README.md and in docs/*.md runs as written, against a fake exchange.

The README and every Markdown file in ``docs/`` are read when the tests are
collected, so their examples are tested as they are today, whoever edits them,
and a new file in ``docs/`` is covered without a change here. Each file is read
on its own: "earlier block" below means an earlier block of the same file. The
conventions, for whoever writes one:

``python`` blocks
  Each block is one test. It runs in a fresh Python process (``python -W error``,
  in an empty working directory, with the repo's ``asyncstop`` first on the path
  and without the caller's ``ASYNCSTOP_*`` variables) against a fresh
  :class:`asyncstop.testing.FakeExchange`, and passes when the process exits 0
  and the exchange saw no request inside a 429 pause.

  - Top-level ``await`` works, as in the asyncio REPL: such a block runs on
    ``asyncio.run``. A block without one runs as plain module code, so it may
    start its own event loop (``asyncio.run``, ``asyncio.Runner``).
  - After a block has run, each ``async def`` it defines at top level that
    takes no arguments is called and awaited, in order: a block that only
    defines ``async def run_bot()`` is run by running the bot.
  - Names a block uses without defining them are given by the harness:

    ``client``
        an open ``AsyncStopClient`` on the fake exchange for account ``acc-1``
        (only in blocks with top-level ``await``, since it needs a loop);
    ``order_id``
        the id of a live stop order (on the account it is used with, as below);
    ``get_fresh_jwt``
        an async callable returning the fake exchange's token;
    ``token.txt``
        a file in the working directory holding that token, as
        ``--token-file`` reads it (so a block may define its own provider
        that reads it);
    any function or class an earlier block of the same file defines at top level
        (so ``runner.run(run_bot())`` runs the README's ``run_bot``). It runs
        with its own block's imports; imports are not carried over.

  - Placeholders: a URL on a host in the reserved ``.example`` domain
    (``https://broker.example``) stands for the exchange, and is replaced by the
    fake exchange's base URL. No made-up host is ever resolved.
  - Order ids: each string literal shaped like a ULID (26 characters of Crockford
    base32, e.g. ``01K2MNGAWPMQJ7WGATFSCAS1G4``) and the given ``order_id`` are
    live stop orders on the fake exchange, on the account they are used with:
    the first item of an ``(account_id, order_id)`` pair, else the
    ``account_id=`` keyword of the call they are passed to, else the
    ``account_id=`` of the block's ``AsyncStopClient(...)`` or ``Watchdog(...)``,
    else ``acc-1``.
    Other ids (``"01K2..."``) are unknown to the exchange: it answers 404.
    So every account a block names, and ``acc-1``, has a live order, and
    ``preflight()`` finds it among the token's accounts.
  - To leave a block out, put ``<!-- readme-example: skip REASON -->`` on the
    line before its opening fence; the test reports it skipped, with the reason.
    Use it sparingly: a block that cannot run here is better shown as a shell
    block, or changed until it can.

``sh``, ``bash``, ``shell`` and ``console`` blocks (in ``console``, only lines starting ``$ ``)
  Each block shows at least one command (show bare output as ``text``).
  Each command is checked to exist, not run: ``asyncstop SUB`` (or
  ``python -m asyncstop SUB``) and ``python -m benchmarks`` must answer ``--help``
  with every ``--flag`` the command uses (a flag may also be a global one, from
  ``asyncstop --help``); ``pip install`` may name only extras
  that pyproject.toml declares; ``npm ci`` needs package-lock.json; any other
  program must be on PATH (``python3 -m venv``, ``.``, ``cd`` and ``export`` are
  taken as given).

  Text for another machine, whose programs need not exist here (``systemctl``,
  ``docker``, ``journalctl``), is marked in its info string: ````` ```sh not-here `````.
  The mark is for shell blocks only (a Python or JSON block so marked fails),
  and its block's commands are not checked.

``json`` blocks
  Parse as JSON, or as JSON Lines.

Other blocks (``text``, ``ini`` for a systemd unit, none) are output or
pictures, and are not checked.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import inspect
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
TOKEN = "readme.example.token"
ACCOUNT = "acc-1"
GIVEN_ORDER_ID = "01KEXAMP1E0RDER0000000000Z"
EXAMPLE_HOST = re.compile(r"https?://[A-Za-z0-9.-]+\.example(?::\d+)?(?=[/\"'])")
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
SKIP = re.compile(r"<!--\s*readme-example:\s*skip\b\s*(.*?)\s*-->")
FENCE = re.compile(r"^```([\w+-]*)([^`]*)$")
#: The info-string word that marks a shell block as text for another machine.
NOT_HERE = "not-here"
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}
#: Shell words that need no check: standard tools and shell builtins.
GIVEN_PROGRAMS = {".", "source", "cd", "export"}
EXAMPLE_TIMEOUT = 45.0
#: The calls whose ``account_id=`` is a block's default account.
ACCOUNT_HOLDERS = {"AsyncStopClient", "Watchdog"}


@dataclass(frozen=True)
class Block:
    """One fenced code block of the README or of a file in docs/."""

    language: str
    source: str
    line: int  #: the file's line of the block's first line of code
    heading: str
    skip: str | None
    file: str = "README.md"  #: relative to the repository
    not_here: bool = False  #: marked ``not-here`` in its info string

    @property
    def test_id(self) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", self.heading.lower()).strip("-")
        return f"{self.file}-L{self.line}-{slug}"

    @property
    def where(self) -> str:
        return f"{self.file} line {self.line}"


def read_blocks(text: str, file: str = "README.md") -> list[Block]:
    """Every fenced block of a Markdown text, with its line and the heading above it."""
    blocks: list[Block] = []
    heading = ""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
        fence = FENCE.match(line)
        if fence is None:
            index += 1
            continue
        end = index + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        before = next((lines[i] for i in range(index - 1, -1, -1) if lines[i].strip()), "")
        skip = SKIP.search(before)
        blocks.append(
            Block(
                language=fence.group(1).lower(),
                source="\n".join(lines[index + 1 : end]) + "\n",
                line=index + 2,
                heading=heading,
                skip=(skip.group(1) or "marked skip") if skip else None,
                file=file,
                not_here=NOT_HERE in fence.group(2).split(),
            )
        )
        index = end + 1
    return blocks


def documents() -> list[Path]:
    """The README and every Markdown file in docs/, in a fixed order."""
    return [README, *sorted(DOCS.glob("*.md"))]


BLOCKS = [
    block
    for path in documents()
    for block in read_blocks(path.read_text(encoding="utf-8"), path.relative_to(ROOT).as_posix())
]


def _blocks(*languages: str) -> list[Any]:
    return [
        pytest.param(block, id=block.test_id) for block in BLOCKS if block.language in languages
    ]


def _skip_if_marked(block: Block) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.where}: {block.skip}")


# -- python blocks -----------------------------------------------------------------------------


def _definitions(source: str) -> list[ast.stmt]:
    """A block's top-level imports, functions and classes: what later blocks may use."""
    kinds = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return [node for node in ast.parse(source).body if isinstance(node, kinds)]


def _live_orders(tree: ast.Module, given_order_id: str) -> dict[str, str]:
    """Order id -> account, for each ULID literal (and ``order_id``) one block's code uses."""
    default = next(
        (
            account
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and _called_name(node) in ACCOUNT_HOLDERS
            for account in [_keyword_str(node, "account_id")]
            if account is not None
        ),
        ACCOUNT,
    )

    def order_of(node: ast.AST) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value if ULID.fullmatch(node.value) else None
        if isinstance(node, ast.Name) and node.id == "order_id":
            return given_order_id
        return None

    orders: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple) and len(node.elts) == 2:
            account_node, order_node = node.elts
            order = order_of(order_node)
            if (
                order is not None
                and isinstance(account_node, ast.Constant)
                and isinstance(account_node.value, str)
            ):
                orders.setdefault(order, account_node.value)
        elif isinstance(node, ast.Call):
            account = _keyword_str(node, "account_id") or default
            for arg in node.args:
                order = order_of(arg)
                if order is not None:
                    orders.setdefault(order, account)
    for node in ast.walk(tree):
        order = order_of(node)
        if order is not None:
            orders.setdefault(order, default)
    orders.setdefault(given_order_id, default)
    return orders


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _keyword_str(call: ast.Call, name: str) -> str | None:
    for keyword in call.keywords:
        if (
            keyword.arg == name
            and isinstance(keyword.value, ast.Constant)
            and isinstance(keyword.value.value, str)
        ):
            return keyword.value.value
    return None


@pytest.mark.parametrize("block", _blocks("python"))
async def test_python_example_runs(block: Block, tmp_path: Path) -> None:
    """The README's or docs' Python example runs to the end against a fake exchange, as written."""
    from asyncstop.testing import FakeExchange

    assert not block.not_here, f"{block.where}: only shell blocks may be marked {NOT_HERE}"
    _skip_if_marked(block)
    earlier = [
        b
        for b in BLOCKS
        if b.file == block.file
        and b.language == "python"
        and b.line < block.line
        and b.skip is None
    ]
    async with FakeExchange(tokens={TOKEN}, seed=1) as exchange:

        def on_exchange(source: str) -> str:
            return EXAMPLE_HOST.sub(exchange.base_url, source)

        definitions: list[dict[str, Any]] = [
            {"source": on_exchange(b.source), "line": b.line} for b in earlier
        ]
        source = on_exchange(block.source)
        # The block's own accounts win over those of the definitions it carries.
        orders = _live_orders(ast.parse(source), GIVEN_ORDER_ID)
        for carried in reversed(definitions):
            tree = ast.Module(_definitions(carried["source"]), type_ignores=[])
            orders = _live_orders(tree, GIVEN_ORDER_ID) | orders
        for order_id, account_id in orders.items():
            exchange.add_stop_order(account_id=account_id, order_id=order_id)
        exchange.add_stop_orders(1, account_id=ACCOUNT)  # the given client's account exists
        spec = {
            "source": source,
            "line": block.line,
            "file": block.file,
            "definitions": definitions,
            "base_url": exchange.base_url,
            "token": TOKEN,
            "account_id": ACCOUNT,
            "order_id": GIVEN_ORDER_ID,
        }
        (tmp_path / "token.txt").write_text(TOKEN + "\n", encoding="utf-8")
        env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTOP_")}
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-W",
            "error",
            "-m",
            "tests.test_readme_examples",
            cwd=tmp_path,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        try:
            async with asyncio.timeout(EXAMPLE_TIMEOUT):
                output, _ = await child.communicate(json.dumps(spec).encode())
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
        shown = output.decode(errors="replace")
        assert child.returncode == 0, f"{block.where}:\n{shown}"
        assert not exchange.pause_violations


def _run_example(spec: dict[str, Any]) -> None:
    """In the child process: run one README block as the module docstring describes."""
    import asyncstop

    async def get_fresh_jwt() -> str:
        token: str = spec["token"]
        return token

    given: dict[str, Any] = {"get_fresh_jwt": get_fresh_jwt, "order_id": spec["order_id"]}
    for earlier in spec["definitions"]:
        namespace = {"__name__": "__readme__", **given}
        padded = "\n" * (earlier["line"] - 1) + earlier["source"]
        definitions = ast.Module(_definitions(padded), type_ignores=[])
        exec(compile(definitions, spec["file"], "exec"), namespace)  # noqa: S102 -- the README's own code
        for node in definitions.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                given[node.name] = namespace[node.name]

    padded = "\n" * (spec["line"] - 1) + spec["source"]
    code = compile(padded, spec["file"], "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    namespace = {"__name__": "__main__", **given}
    entry_points = [
        node.name
        for node in ast.parse(spec["source"]).body
        if isinstance(node, ast.AsyncFunctionDef)
        and not (node.args.args or node.args.posonlyargs or node.args.kwonlyargs)
    ]

    async def call_entry_points() -> None:
        for name in entry_points:
            await namespace[name]()

    if code.co_flags & inspect.CO_COROUTINE:

        async def main() -> None:
            async with asyncstop.AsyncStopClient(
                base_url=spec["base_url"], token=spec["token"], account_id=spec["account_id"]
            ) as client:
                namespace["client"] = client
                await eval(code, namespace)  # noqa: S307 -- the README's own code
                await call_entry_points()

        asyncio.run(main())
    else:
        exec(code, namespace)  # noqa: S102 -- the README's own code
        if entry_points:
            asyncio.run(call_entry_points())


# -- shell blocks ------------------------------------------------------------------------------


def _commands(block: Block) -> Iterator[list[str]]:
    """The simple commands of a shell block, as argument lists."""
    text = block.source.replace("\\\n", " ")
    lines = text.splitlines()
    if block.language == "console":
        lines = [line[2:] for line in lines if line.startswith("$ ")]
    for line in lines:
        for part in re.split(r"&&|\|\||;|\|", line):
            words = shlex.split(part, comments=True)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]
            if words:
                yield words


@functools.cache
def _help(*module_and_subcommand: str) -> str:
    """The ``--help`` text of ``python -m MODULE [SUBCOMMAND]``, or a failure."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTOP_")}
    env["COLUMNS"] = "200"  # one option per line, for the flag check
    done = subprocess.run(
        [sys.executable, "-m", *module_and_subcommand, "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.fail(f"`python -m {' '.join(module_and_subcommand)} --help` failed:\n{done.stderr}")
    return done.stdout


def _options(help_text: str) -> set[str]:
    """The long options an argparse help lists in its option column (not those its prose names)."""
    return {
        option
        for line in help_text.splitlines()
        if line.strip().startswith("-")
        for option in re.findall(r"--[\w-]+", re.split(r"\s{2,}", line.strip())[0])
    }


def _check_module_command(module: str, args: list[str], command: str) -> None:
    options = _options(_help(module))
    subcommand = next((a for a in args if not a.startswith("-")), None)
    if module == "asyncstop" and subcommand is not None:
        options |= _options(_help(module, subcommand))
    unknown = sorted({a.split("=", 1)[0] for a in args if a.startswith("--")} - options)
    assert not unknown, f"`{command}`: no {unknown} in the --help of `{module} {subcommand}`"


def _extras() -> set[str]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return set(tomllib.load(file)["project"].get("optional-dependencies", {}))


def _check_command(words: list[str]) -> None:
    command = shlex.join(words)
    program, args = words[0], words[1:]
    if program in {"python", "python3"} and args[:1] == ["-m"] and len(args) >= 2:
        module, args = args[1], args[2:]
        if module in {"asyncstop", "benchmarks"}:
            _check_module_command(module, args, command)
        elif module == "pip":
            _check_command(["pip", *args])
        elif module == "pytest":
            assert (ROOT / "tests").is_dir()
        elif module != "venv":
            __import__(module)
        return
    if program == "asyncstop":
        _check_module_command("asyncstop", args, command)
    elif program == "pip":
        for arg in args:
            extras = re.fullmatch(r"(?:\.|asyncstop)\[([\w,-]+)\]", arg)
            if extras:
                missing = set(extras.group(1).split(",")) - _extras()
                assert not missing, f"`{command}`: pyproject.toml declares no extra {missing}"
    elif program == "npm":
        if args[:1] == ["ci"]:
            assert (ROOT / "package-lock.json").is_file(), f"`{command}` needs package-lock.json"
    elif program not in GIVEN_PROGRAMS:
        assert shutil.which(program) is not None, f"`{command}`: {program} is not on PATH"


@pytest.mark.parametrize("block", _blocks(*SHELL_LANGUAGES))
def test_shell_example_commands_exist(block: Block) -> None:
    """Each command the README or docs show exists, with the subcommands, flags and extras named."""
    _skip_if_marked(block)
    if block.not_here:
        pytest.skip(f"{block.where}: marked {NOT_HERE}, for another machine")
    commands = list(_commands(block))
    assert commands, f"{block.where}: a shell block with no command"
    for words in commands:
        _check_command(words)


@pytest.mark.parametrize("block", _blocks("json"))
def test_json_example_parses(block: Block) -> None:
    """The README's or docs' JSON example is JSON, or JSON Lines."""
    assert not block.not_here, f"{block.where}: only shell blocks may be marked {NOT_HERE}"
    _skip_if_marked(block)
    try:
        json.loads(block.source)
    except json.JSONDecodeError:
        for line in block.source.splitlines():
            if line.strip():
                json.loads(line)


def test_the_harness_reads_fences_lines_and_skip_marks() -> None:
    """The block reader finds each block's language, first code line, heading and skip reason."""
    text = (
        "# Title\n\n## Cancel\n\n```python\nawait x\n```\n\n"
        "<!-- readme-example: skip needs a real exchange -->\n```sh\nls\n```\n"
    )
    python, shell = read_blocks(text)
    assert (python.language, python.line, python.heading, python.skip) == (
        "python",
        6,
        "Cancel",
        None,
    )
    assert python.source == "await x\n"
    assert (shell.language, shell.skip) == ("sh", "needs a real exchange")
    assert not python.not_here
    assert not shell.not_here


def test_the_harness_reads_the_not_here_mark_and_names_the_file() -> None:
    """A `not-here` word in the info string marks a block; ids and messages name its file."""
    text = "## Units\n\n```sh not-here\nsystemctl stop bot\n```\n\n```console\n$ ls\n```\n"
    marked, plain = read_blocks(text, "docs/watchdog.md")
    assert (marked.language, marked.not_here, plain.not_here) == ("sh", True, False)
    assert marked.test_id == "docs/watchdog.md-L4-units"
    assert marked.where == "docs/watchdog.md line 4"


def test_the_readme_opens_with_the_demo_and_the_test_command() -> None:
    """The README's first shell block runs `asyncstop demo`; its second, CI's test command."""
    demo, tests = [b for b in BLOCKS if b.file == "README.md" and b.language in SHELL_LANGUAGES][:2]
    assert ["asyncstop", "demo"] in list(_commands(demo))
    commands = list(_commands(tests))
    assert ["pip", "install", "-e", ".[dev]"] in commands
    assert ["npm", "ci"] in commands
    assert commands[-1] == ["python", "-m", "pytest"]


def test_every_markdown_file_in_docs_is_read() -> None:
    """A new file in docs/ has its examples tested without any change to this module."""
    assert documents()[0] == README
    assert set(documents()[1:]) == set(DOCS.glob("*.md"))
    files = {block.file for block in BLOCKS}
    with_blocks = {
        path.relative_to(ROOT).as_posix()
        for path in documents()
        if "```" in path.read_text(encoding="utf-8")
    }
    assert files == with_blocks


def test_the_harness_reads_commands_and_declared_options() -> None:
    """Console blocks give only their `$ ` lines, split at && and ||; help prose names no option."""
    block = Block(
        "console",
        "$ X=1 asyncstop kill --ids a || asyncstop kill --ids b\nasyncstop: error: ...\n",
        1,
        "",
        None,
    )
    assert list(_commands(block)) == [
        ["asyncstop", "kill", "--ids", "a"],
        ["asyncstop", "kill", "--ids", "b"],
    ]
    help_text = (
        "usage: x [-h] [--ids FILE]\n\noptions:\n  -h, --help  show this\n"
        "  --ids FILE  read ids (see --pending-out)\n  --progress, --no-progress\n"
    )
    assert _options(help_text) == {"--help", "--ids", "--progress", "--no-progress"}


def test_ulid_literals_become_live_orders_on_the_account_they_are_used_with() -> None:
    """Literal ids go to their pair's account, their call's account_id=, else the client's."""
    a, b, c = (
        "01K2MNGAWPMQJ7WGATFSCAS1G4",
        "01K2MNH0QZ6Y0B5W3RJ2T5V8XA",
        "01K2MNGB6MNQ927D9MKSHTPTK9",
    )
    source = (
        "c = AsyncStopClient(base_url=u, token=t, account_id='main')\n"
        f"r.add({a!r})\nr.add({b!r}, account_id='other')\nx = [('acc-2', {c!r}), '01K2...']\n"
        "f(order_id, account_id='third')\n"
    )
    orders = _live_orders(ast.parse(source), GIVEN_ORDER_ID)
    assert orders == {a: "main", b: "other", c: "acc-2", GIVEN_ORDER_ID: "third"}


if __name__ == "__main__":
    _run_example(json.load(sys.stdin))
