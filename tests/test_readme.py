"""The README tells the truth: its `make demo` block is what the demo command prints today, and the
commands it shows exist."""
import re
import subprocess
import sys

import pytest

from test_cli import ENV, REPO, TIMEOUT, io_args

README = (REPO / "README.md").read_text()
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s+(\w+): train error\s+([\d.]+)%\s+test error\s+([\d.]+)%", re.M)


def demo_command():
    """The demo's flags, read from the Makefile (`DEMO := main.py ...`): the test runs what users run."""
    m = re.search(r"^DEMO\s*:=\s*main\.py (.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile has no DEMO line"
    return m.group(1).split()


def readme_demo_block():
    m = re.search(r"\*\*`make demo`\*\*.*?```\n(.*?)```", README, re.S)
    assert m, "README has no make demo block"
    return m.group(1)


def errors(text):
    return [(int(e), m, float(tr), float(te)) for e, _, m, tr, te in EPOCH_LINE.findall(text)]


@pytest.mark.mnist
@pytest.mark.slow
def test_demo_block_is_what_the_demo_prints(tmp_path):
    want = errors(readme_demo_block())
    assert len(want) == 4, want
    p = subprocess.run([sys.executable, "main.py", *demo_command(), *io_args(tmp_path)], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr
    assert errors(p.stdout) == want, f"README demo block is stale; the demo printed:\n{p.stdout}"


def test_readme_commands_name_real_presets_and_flags():
    sys.path.insert(0, str(REPO))
    import main as cli
    parser = cli.make_parser()
    flags = set(parser._option_string_actions)
    for cmd in re.findall(r"(?:\.venv/bin/)?python main\.py ([^\n`#|]*)", README):
        for flag in re.findall(r"(?<![\w-])(--[A-Za-z][\w-]*)", cmd):
            assert flag in flags, f"README names unknown flag {flag} in: {cmd}"
        for name in re.findall(r"--preset ([\w-]+)", cmd):
            assert name in cli.PRESETS, f"README names unknown preset {name}"
    assert not re.search(r"cpu-20\d\d-\d\d-\d\d", README), "a literal dated path in the README"
