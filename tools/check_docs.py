"""Checks that every command and code snippet shown in README.md and docs/*.md still works.

Each fenced ``bash`` or ``python`` block is checked according to the HTML comment on the line just above it:

* no comment (default): a *static* check. Every shell command must name a known program and its pieces must
  exist: ``python tools/X.py`` / ``python -m module`` (the script or module exists and every ``--flag`` shown
  appears in its ``--help``), ``bash tools/X.sh`` (the script exists), ``make TARGET`` (the Makefile has the
  target), ``mim`` and ``hrnet-mm`` subcommands; every ``configs/...`` path exists (placeholders written in
  capitals, like ``CONFIG``, are not checked). Python blocks must compile.
* ``<!-- docs-check: run -->``: the block is *executed* (``--run``), line by line for bash, as one script for
  python, in a scratch folder per document where ``configs/`` and ``tools/`` link to the repository and
  ``python`` is the project's interpreter. Blocks of one document share the folder, in order, so a
  quickstart's steps (write data, train, test, draw) run as a user would run them.
* ``<!-- docs-check: config -->``: a python block that is a config (or a fragment of one); it is loaded with
  mmengine's ``Config.fromfile`` (``--run``; statically it must compile).
* ``<!-- docs-check: skip REASON -->``: not checked; the reason is required (network, GPUs, slurm, ...).

Markdown links to files of the repository must resolve.

Usage::

    python tools/check_docs.py            # static checks of README.md and docs/*.md (seconds)
    python tools/check_docs.py --run      # also execute the run/config blocks (minutes: trains the demos)
    python tools/check_docs.py --run --only docs/getting_started.md

Exit status 0 when everything passes; otherwise one line per problem, ``FILE:LINE: message``, and status 1.
"""
from __future__ import annotations

import argparse
import functools
import os
import os.path as osp
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
FENCE = re.compile(r'^```(\w*)\s*$')
ANNOTATION = re.compile(r'^<!--\s*docs-check:\s*(run|config|skip)\b\s*(.*?)\s*-->\s*$')
PLACEHOLDER = re.compile(r'^\[?[A-Z][A-Z0-9_]*(\.\.\.)?\]?$')
LINK = re.compile(r'\[[^\]]*\]\(([^)#\s]+)(#[^)]*)?\)')
RUN_TIMEOUT_S = 900


@dataclass
class Block:
    """One fenced code block."""

    path: str  # relative to the repository
    line: int  # 1-based line of the first code line
    lang: str
    mode: str  # 'static', 'run', 'config' or 'skip'
    text: str
    reason: str = ''


@dataclass
class Report:
    """Problems found, as ``FILE:LINE: message`` lines."""

    problems: List[str] = field(default_factory=list)
    checked: int = 0
    ran: int = 0

    def add(self, block: Block, offset: int, message: str) -> None:
        self.problems.append(f'{block.path}:{block.line + offset}: {message}')


def doc_files() -> List[str]:
    """README.md, CONTRIBUTING.md and every markdown file under docs/, relative to the repository."""
    docs = sorted(f'docs/{name}' for name in os.listdir(osp.join(ROOT, 'docs')) if name.endswith('.md'))
    return ['README.md', 'CONTRIBUTING.md'] + docs


def parse_blocks(path: str) -> List[Block]:
    """The fenced blocks of one markdown file with their check mode.

    Raises:
        ValueError: An unclosed fence, a ``skip`` without reason, or an annotation not followed by a block.
    """
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        lines = f.read().splitlines()
    blocks: List[Block] = []
    i = 0
    pending: Optional[tuple] = None
    while i < len(lines):
        ann = ANNOTATION.match(lines[i].strip())
        if ann:
            pending = (ann.group(1), ann.group(2), i + 1)
            i += 1
            continue
        fence = FENCE.match(lines[i].strip()) if lines[i].startswith('```') else None
        if fence:
            start = i + 1
            end = start
            while end < len(lines) and not lines[end].startswith('```'):
                end += 1
            if end == len(lines):
                raise ValueError(f'{path}:{i + 1}: unclosed code fence')
            mode, reason = ('static', '') if pending is None else (pending[0], pending[1])
            if mode == 'skip' and not reason:
                raise ValueError(f'{path}:{pending[2]}: docs-check: skip needs a reason')
            blocks.append(Block(path, start + 1, fence.group(1) or 'text', mode, '\n'.join(lines[start:end]),
                                reason))
            pending = None
            i = end + 1
            continue
        if pending is not None and lines[i].strip():
            raise ValueError(f'{path}:{pending[2]}: docs-check annotation must be followed by a code block')
        i += 1
    return blocks


def commands(text: str) -> Iterable[tuple]:
    """``(offset, command)`` of each shell command in a bash block: comments dropped, ``\\`` lines joined."""
    offset, buf = None, ''
    for k, raw in enumerate(text.splitlines()):
        line = raw.rstrip()
        if offset is None:
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            offset = k
        if line.endswith('\\'):
            buf += line[:-1] + ' '
            continue
        buf += line
        yield offset, _strip_comment(buf).strip()
        offset, buf = None, ''
    if buf:
        yield offset, _strip_comment(buf).strip()


def _strip_comment(cmd: str) -> str:
    """``cmd`` without a trailing ``# comment`` (a ``#`` outside quotes preceded by white space)."""
    quote = None
    for k, ch in enumerate(cmd):
        if quote:
            quote = None if ch == quote else quote
        elif ch in '\'"':
            quote = ch
        elif ch == '#' and (k == 0 or cmd[k - 1].isspace()):
            return cmd[:k]
    return cmd


@functools.lru_cache(maxsize=None)
def help_text(argv: tuple) -> str:
    """The ``--help`` output of a program run from the repository root (cached)."""
    env = dict(os.environ, PYTHONWARNINGS='ignore')
    proc = subprocess.run([sys.executable, *argv, '--help'], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f'`{" ".join(argv)} --help` failed: {(proc.stderr.strip().splitlines() or [""])[-1]}')
    return proc.stdout


@functools.lru_cache(maxsize=None)
def make_targets() -> frozenset:
    """Targets defined in the Makefile."""
    with open(osp.join(ROOT, 'Makefile'), encoding='utf-8') as f:
        return frozenset(m.group(1) for m in re.finditer(r'^([\w.-]+):', f.read(), re.M))


def _is_placeholder(token: str) -> bool:
    return bool(PLACEHOLDER.match(token)) or '...' in token or token.startswith('[')


def _check_flags(report: Report, block: Block, offset: int, argv: tuple, tokens: List[str]) -> None:
    try:
        text = help_text(argv)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        report.add(block, offset, str(exc))
        return
    for tok in tokens:
        flag = tok.strip('[]').split('=')[0]
        if flag.startswith('--') and len(flag) > 2 and not re.search(re.escape(flag) + r'(?![\w-])', text):
            report.add(block, offset, f'`{" ".join(argv)}` has no option {flag} (see its --help)')


def _check_paths(report: Report, block: Block, offset: int, tokens: List[str]) -> None:
    for tok in tokens:
        value = tok.split('=', 1)[-1].strip('[]')
        parts = value.split('/')
        if value.startswith(('configs/', 'tools/', 'docs/')) and not any(_is_placeholder(p) for p in parts):
            if not osp.exists(osp.join(ROOT, value)):
                report.add(block, offset, f'path not found: {value}')


def check_command(report: Report, block: Block, offset: int, cmd: str) -> None:
    """Static check of one shell command."""
    try:
        tokens = shlex.split(cmd)
    except ValueError as exc:
        report.add(block, offset, f'cannot parse command ({exc}): {cmd}')
        return
    while tokens and re.match(r'^\w+=', tokens[0]):  # VAR=value prefixes
        tokens = tokens[1:]
    if tokens[:1] == ['/usr/bin/time']:
        tokens = tokens[1:]
    if not tokens:
        return
    prog, args = tokens[0], tokens[1:]
    _check_paths(report, block, offset, tokens)
    if prog in ('python', '.venv/bin/python', 'python3'):
        if args[:1] == ['-m']:
            module = args[1]
            if module == 'pytest':
                return
            _check_flags(report, block, offset, ('-m', module), args[2:])
        elif args and args[0].endswith('.py'):
            if not osp.isfile(osp.join(ROOT, args[0])):
                report.add(block, offset, f'script not found: {args[0]}')
                return
            _check_flags(report, block, offset, (args[0],), args[1:])
        elif args[:1] == ['-c']:
            try:
                compile(args[1], f'{block.path}:{block.line + offset}', 'exec')
            except SyntaxError as exc:
                report.add(block, offset, f'python -c does not compile: {exc.msg}')
        else:
            report.add(block, offset, f'unknown python invocation: {cmd}')
    elif prog == 'bash':
        if not args or not osp.isfile(osp.join(ROOT, args[0])):
            report.add(block, offset, f'script not found: {args[0] if args else "(none)"}')
    elif prog == 'make':
        for target in (a for a in args if not re.match(r'^\w+=', a) and not a.startswith('-')):
            if target not in make_targets():
                report.add(block, offset, f'Makefile has no target {target!r}')
    elif prog == 'mim':
        if not args or args[0] not in ('train', 'test', 'search', 'download', 'run', 'list', 'install'):
            report.add(block, offset, f'unknown mim subcommand: {cmd}')
    elif prog == 'hrnet-mm':
        _check_flags(report, block, offset, ('-m', 'hrnet_mm.cli'), args)
        if args and args[0] not in help_text(('-m', 'hrnet_mm.cli')):
            report.add(block, offset, f'hrnet-mm has no subcommand {args[0]!r}')
    elif prog in ('git', 'cd', '.', 'source', 'ls', 'export', 'pip', '.venv/bin/pip', 'mkdir', 'cp'):
        return
    else:
        report.add(block, offset, f'unknown program {prog!r}; check it or annotate the block with '
                   '<!-- docs-check: skip REASON -->')


def check_static(report: Report, block: Block) -> None:
    """The checks of a block without execution."""
    report.checked += 1
    if block.lang == 'python':
        try:
            compile(block.text, f'{block.path}:{block.line}', 'exec')
        except SyntaxError as exc:
            report.add(block, (exc.lineno or 1) - 1, f'python block does not compile: {exc.msg}')
    elif block.lang in ('bash', 'sh', 'shell'):
        for offset, cmd in commands(block.text):
            check_command(report, block, offset, cmd)


def check_links(report: Report, path: str) -> None:
    """Relative markdown links must point at existing files."""
    with open(osp.join(ROOT, path), encoding='utf-8') as f:
        lines = f.read().splitlines()
    base = osp.dirname(osp.join(ROOT, path))
    in_fence = False
    for k, line in enumerate(lines):
        if line.startswith('```'):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in LINK.finditer(line):
            target = m.group(1)
            if re.match(r'^[a-z]+://', target) or target.startswith('mailto:'):
                continue
            if not osp.exists(osp.normpath(osp.join(base, target))):
                report.problems.append(f'{path}:{k + 1}: broken link {target}')


class Sandbox:
    """A scratch folder per document in which run blocks execute like a user's shell in a clone."""

    def __init__(self, root: str, name: str) -> None:
        self.dir = osp.join(root, re.sub(r'\W', '_', name))
        os.makedirs(self.dir, exist_ok=True)
        for entry in ('configs', 'tools'):
            link = osp.join(self.dir, entry)
            if not osp.exists(link):
                os.symlink(osp.join(ROOT, entry), link)
        # the project's interpreter first on PATH, as after `. .venv/bin/activate`
        self.env = dict(os.environ, PATH=os.pathsep.join([osp.dirname(sys.executable), os.environ.get('PATH', '')]),
                        PYTHONWARNINGS='ignore', MPLBACKEND='Agg')

    def run(self, report: Report, block: Block, offset: int, argv: List[str], label: str) -> bool:
        start = time.time()
        try:
            proc = subprocess.run(argv, cwd=self.dir, env=self.env, capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            report.add(block, offset, f'timed out after {RUN_TIMEOUT_S} s: {label}')
            return False
        report.ran += 1
        print(f'  ran {block.path}:{block.line + offset} in {time.time() - start:.1f} s: {label[:90]}', flush=True)
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-8:]
            report.add(block, offset, f'exit status {proc.returncode}: {label}\n    ' + '\n    '.join(tail))
            return False
        return True


def run_block(report: Report, block: Block, sandbox: Sandbox) -> None:
    """Executes a run/config block; the first failing command stops the block."""
    if block.mode == 'config':
        snippet = osp.join(sandbox.dir, f'snippet_{block.line}.py')
        with open(snippet, 'w', encoding='utf-8') as f:
            f.write(block.text + '\n')
        code = ('import hrnet_mm, sys; from mmengine.config import Config; '
                f'Config.fromfile({snippet!r})')
        sandbox.run(report, block, 0, [sys.executable, '-c', code], f'Config.fromfile(<block at line {block.line}>)')
    elif block.lang == 'python':
        script = osp.join(sandbox.dir, f'snippet_{block.line}.py')
        with open(script, 'w', encoding='utf-8') as f:
            f.write(block.text + '\n')
        sandbox.run(report, block, 0, [sys.executable, script], f'python block at line {block.line}')
    else:
        for offset, cmd in commands(block.text):
            if not sandbox.run(report, block, offset, ['bash', '-e', '-o', 'pipefail', '-c', cmd], cmd):
                return


def check(paths: List[str], run: bool, scratch: Optional[str],
          select: Optional[Callable[[Block], bool]] = None) -> Report:
    """Checks the given markdown files; executes run/config blocks when ``run`` (only those for which
    ``select(block)`` is true, when given)."""
    report = Report()
    sandboxes: Dict[str, Sandbox] = {}
    scratch_root = scratch or tempfile.mkdtemp(prefix='hrnet_mm_docs_')
    try:
        for path in paths:
            check_links(report, path)
            try:
                blocks = parse_blocks(path)
            except ValueError as exc:
                report.problems.append(str(exc))
                continue
            for block in blocks:
                if block.mode == 'skip':
                    continue
                check_static(report, block)
                if run and block.mode in ('run', 'config') and (select is None or select(block)):
                    if path not in sandboxes:
                        sandboxes[path] = Sandbox(scratch_root, path)
                    run_block(report, block, sandboxes[path])
    finally:
        if scratch is None:
            shutil.rmtree(scratch_root, ignore_errors=True)
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description='Check the commands and snippets of README.md and docs/*.md')
    parser.add_argument('--run', action='store_true', help='also execute the run/config blocks (minutes)')
    parser.add_argument('--only', nargs='+', help='markdown files to check (default: README.md and docs/*.md)')
    parser.add_argument('--scratch', help='keep the scratch folders here (default: a temporary folder, removed)')
    args = parser.parse_args(argv)
    paths = args.only or doc_files()
    for p in paths:
        if not osp.isfile(osp.join(ROOT, p)):
            parser.error(f'not found: {p}')
    report = check(paths, args.run, args.scratch)
    for problem in report.problems:
        print(problem)
    status = 'FAILED' if report.problems else 'ok'
    print(f'check_docs: {len(paths)} files, {report.checked} blocks checked, {report.ran} commands run, '
          f'{len(report.problems)} problems: {status}')
    return 1 if report.problems else 0


if __name__ == '__main__':
    sys.exit(main())
