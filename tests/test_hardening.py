"""The first hour of a new user, as subprocess tests of main.py: resume never damages a
result folder, Ctrl-C says the truth, help and start-up lines, figure failures, flag spellings."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest

from test_cli import (BASE, ENV, REPO, TIMEOUT, TOY, import_main, io_args, main_cmd, ok, run_main,
                      snapshot)

TOY_ARGV = [str(a) for a in TOY]
TINY = ["--preset", "P-1h", "--train-subset", 200, "--test-subset", 100, "--T", 8, "--Kmax", 3,
        "--seed", 5, "--quiet"]


def one_line_error(p, pattern):
    assert "Traceback" not in p.stderr + p.stdout, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert re.search(pattern, lines[0]), lines[0]
    return lines[0]


def trial_of(results_dir):
    (folder,) = list(results_dir.glob("*/*/Trial-*"))
    return folder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-epoch run; each test works on a copy."""
    root = tmp_path_factory.mktemp("finished")
    ok(run_main(*TINY, "--epochs", 2, *io_args(root)))
    return trial_of(root)


@pytest.fixture
def folder(finished, tmp_path):
    import shutil
    dst = tmp_path / "Trial-1"
    shutil.copytree(finished, dst)
    return dst


@pytest.mark.mnist
@pytest.mark.parametrize("argv,pattern", [
    (["--epochs", 0], r"--epochs must be >= 1"),
    (["--epochs", 1], r"already done 2 epochs"),
    (["--T", 5], r"--T would change the experiment \(the folder has 8\)"),
    (["--lr_tab", 0.1, 0.1], r"--lr_tab would change the experiment \(the folder has 0.04 0.08\)"),
    (["--preset", "P-2h"], r"--resume: --preset cannot be given"),
    # the folder's own preset too: its epochs (a runtime flag) would silently extend the run
    (["--preset", "P-1h"], r"--resume: --preset cannot be given"),
    (["--no-benchmark"], r"--benchmark would change"),
    (["--seed", 6], r"--seed would change the experiment \(the folder has 5\)"),
])
def test_bad_resume_writes_nothing(folder, argv, pattern):
    before = snapshot(folder)
    p = run_main("--resume", folder, *argv)
    assert p.returncode == 2, p.stderr
    one_line_error(p, pattern)
    assert snapshot(folder) == before  # not one byte rewritten: the folder still resumes
    ok(run_main("--resume", folder, "--epochs", 3, "--quiet"))


@pytest.mark.mnist
def test_resume_accepts_and_records_runtime_flags(folder):
    p = run_main("--resume", folder, "--epochs", 3, "--threads", 1, "--quiet", "--seed", 5,
                 "--data-dir", REPO / "data")
    ok(p)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["args"]["epochs"] == 3
    last = cfg["resumed"][-1]
    assert last["threads"] == 1 and last["epochs"] == 3 and last["quiet"] is True
    assert json.loads((folder / "results.json").read_text())["epochs_done"] == 3
    assert "number of epochs: 3" in (folder / "hyperparameters.txt").read_text()


def _interrupt_when(argv, results_dir, ready):
    """Start main.py, send SIGINT once ready(results_dir) is true; returns (exit code, stderr)."""
    # a shell that runs us in the background ignores SIGINT, and children inherit that: restore the
    # default, as in a terminal, so that Python turns SIGINT into KeyboardInterrupt
    proc = subprocess.Popen(main_cmd(*argv, *io_args(results_dir)), cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + TIMEOUT
        while not ready(results_dir):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        err = proc.stderr.read()
        return proc.wait(60), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _epochs_done(results_dir):
    for r in results_dir.glob("*/*/Trial-*/results.json"):
        try:
            return json.loads(r.read_text()).get("epochs_done", 0)
        except ValueError:
            return 0
    return 0


@pytest.mark.mnist
@pytest.mark.slow
def test_ctrl_c_after_an_epoch_names_the_real_folder(tmp_path):
    argv = ["--preset", "P-1h", "--train-subset", 3000, "--test-subset", 200, "--epochs", 50, "--seed", 1,
            "--quiet"]
    code, err = _interrupt_when(argv, tmp_path, lambda d: _epochs_done(d) >= 1)
    folder = trial_of(tmp_path)
    assert code == 130, err
    line = one_line_error(subprocess.CompletedProcess([], code, "", err), r"--resume")
    assert line.endswith(f"--resume {folder}"), line
    ok(run_main("--resume", folder, "--epochs", _epochs_done(tmp_path) + 1, "--quiet"))


@pytest.mark.mnist
def test_ctrl_c_before_the_first_epoch_leaves_no_folder(tmp_path):
    argv = ["--preset", "P-1h", "--train-subset", 20000, "--test-subset", 200, "--epochs", 1, "--seed", 1,
            "--quiet"]
    code, err = _interrupt_when(argv, tmp_path, lambda d: any(d.glob("*/*/Trial-*/config.json")))
    assert code == 130, err
    one_line_error(subprocess.CompletedProcess([], code, "", err), r"interrupted before .*removed")
    assert not list(tmp_path.glob("*/*/Trial-*")), "an unresumable folder was left behind"


def test_no_flags_points_at_presets():
    p = subprocess.run([sys.executable, "main.py"], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 2
    one_line_error(p, r"--preset.*--list-presets")


def test_help_shows_defaults_help_texts_examples_and_presets():
    p = run_main("--help")
    ok(p)
    h = p.stdout
    entries = {e.split()[0]: " ".join(e.split()) for e in re.split(r"\n(?=  -)", h.split("options:")[1]) if e.strip()}
    for flag, default in [("--T", "100"), ("--Kmax", "25"), ("--beta", "1.0"), ("--batch-size", "20"),
                          ("--dt", "0.2"), ("--activation-function", "sigm")]:
        assert f"(default: {default})" in entries[flag], entries[flag]
    assert "--resume FOLDER" in h and "examples:" in h
    cli = import_main()
    for name in cli.PRESETS:
        assert re.search(rf"^\s+{re.escape(name)}\s", h, re.M), name
    parser = cli.make_parser()
    undocumented = [a.option_strings[0] for a in parser._actions if not a.help]
    assert not undocumented, undocumented


def test_kebab_aliases_and_no_prefix_matching():
    cli = import_main()
    a = cli.parse_args(["--lr-tab", "0.1", "0.2", "--size-tab", "10", "64", "784", "--k-max", "7", "--c-tab",
                        "4", "1", "--f-conv", "3", "--f-pool", "2"])
    b = cli.parse_args(["--lr_tab", "0.1", "0.2", "--size_tab", "10", "64", "784", "--Kmax", "7", "--C_tab",
                        "4", "1", "--Fconv", "3", "--Fpool", "2"])
    assert a == b
    with pytest.raises(cli.UsageError, match="did you mean --epochs"):
        cli.parse_args(["--epoch", "3"])


def test_seed_and_folder_printed_even_when_quiet(tmp_path):
    p = run_main(*[a for a in TOY if a not in ("--seed", 0)] + ["--action", "plotcurves"], *io_args(tmp_path))
    ok(p)
    folder = next(tmp_path.glob("*/Trial-1"))
    assert f"results in {folder}" in p.stdout
    m = re.search(r"^seed (\d+) \(drawn", p.stdout, re.M)
    assert m, p.stdout
    assert json.loads((folder / "config.json").read_text())["seed"] == int(m.group(1))


def test_figure_failure_is_an_error_for_plotcurves(tmp_path):
    code = ("import sys, plotFunctions\n"
            "def boom(*a, **k): raise RuntimeError('no\\nfonts')\n"
            "plotFunctions.render = boom\n"
            "import main\n"
            "sys.exit(main.main(sys.argv[1:]))\n")
    argv = [str(a) for a in TOY] + ["--action", "plotcurves"] + io_args(tmp_path)
    p = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=TIMEOUT)
    assert p.returncode == 1, p.stderr
    folder = next(tmp_path.glob("*/Trial-1"))
    line = one_line_error(p, r"figures not rendered \(no fonts\)")
    assert f"cd {folder} && python plotFunctions.py" in line
    res = json.loads((folder / "results.json").read_text())  # the data is complete
    assert res["metrics"]["synapses"] and (folder / "curves.npz").is_file()


def test_nudging_recorded_only_where_not_the_default(tmp_path):
    """--nudging symmetric: in the folder name, hyperparameters.txt and config.json; the default
    (one-sided, the paper's) leaves all three as they were."""
    argv = [a for a in TOY] + ["--action", "plotcurves"]
    ok(run_main(*argv, "--nudging", "symmetric", *io_args(tmp_path / "sym")))
    ok(run_main(*argv, *io_args(tmp_path / "one")))
    (sym,) = list((tmp_path / "sym").glob("ep_cont_toymodel_symmetric/Trial-1"))
    (one,) = list((tmp_path / "one").glob("ep_cont_toymodel/Trial-1"))
    assert "- nudging: symmetric" in (sym / "hyperparameters.txt").read_text()
    assert "nudging" not in (one / "hyperparameters.txt").read_text()
    assert json.loads((sym / "config.json").read_text())["args"]["nudging"] == "symmetric"
    assert "nudging" not in json.loads((one / "config.json").read_text())["args"]
    # the toy model converges: symmetric nudging is closer to BPTT than one-sided (beta 0.01)
    rmse = {k: max(v["rmse"] for g in ("neurons", "synapses") for v in
                   json.loads((f / "results.json").read_text())["metrics"][g].values()) for k, f in
            (("sym", sym), ("one", one))}
    assert rmse["sym"] < rmse["one"], rmse


@pytest.mark.mnist
def test_symmetric_training_ep_only(tmp_path):
    p = run_main(*TINY, "--epochs", 1, "--nudging", "symmetric", "--no-benchmark", *io_args(tmp_path))
    ok(p)
    (folder,) = list(tmp_path.glob("ep_disc_1hidden_symmetric/*/Trial-1"))
    res = json.loads((folder / "results.json").read_text())
    assert len(res["error_test_tab"]) == 1 and "error_test_bptt_tab" not in res
    assert res["error_test_tab"][0] < 70  # learns in one tiny epoch (measured 42 %; chance is 90 %)


# A request the model or action cannot honour is refused before any work (exit 2, one line, nothing
# written): a run records only what it runs.  In-process through main.main, so each case costs no
# interpreter start.
REFUSED = [
    (["--preset", "P-conv", "--dt", "0.5"], r"--dt: not used by the conv net, whose step is always 1"),
    (["--preset", "P-1h", "--no-clamp"], r"--no-clamp: not used by the prototypical model"),
    (["--preset", "P-1h", "--Fconv", "3"], r"--Fconv: not used by a network without --C_tab"),
    (["--preset", "fig3-P-1h", "--epochs", "3"], r"--epochs: not used by --action plotcurves"),
    (["--preset", "P-1h", "--trials", "5"], r"--trials: not used by --action train"),
    (["--preset", "fig2-toy", "--discrete"], r"--discrete: not used by the toy model"),
    (["--preset", "P-1h", "--no-benchmark", "--training-method", "BPTT", "--nudging", "symmetric"],
     r"--nudging: not used by --training-method BPTT without --benchmark"),
    (["--preset", "P-1h", "--train-subset", "70000"], r"--train-subset must be in \[1, 60000\]"),
    (["--preset", "P-1h", "--test-subset", "10001"], r"--test-subset must be in \[1, 10000\]"),
]


@pytest.mark.parametrize("argv,pattern", REFUSED, ids=[" ".join(a) for a in (c[0] for c in REFUSED)])
def test_contradictions_are_refused_before_any_work(argv, pattern, tmp_path):
    """The shared check (experiment.validate, which main.py and reproduce.py both call) refuses them;
    checked without main.main so that a check that wrongly passes cannot start a 30-epoch run."""
    main = import_main()
    import experiment
    with pytest.raises(experiment.UsageError, match=pattern):
        experiment.validate(main.parse_args(argv + ["--results-dir", str(tmp_path / "r")]))
    assert not (tmp_path / "r").exists()


def test_a_refusal_through_main_is_one_line_exit_2(tmp_path, capsys):
    main = import_main()
    code = main.main(REFUSED[0][0] + ["--results-dir", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(REFUSED[0][1], err) and not (tmp_path / "r").exists()


def test_a_preset_flag_the_action_ignores_is_left_out():
    """--preset P-conv --action plotcurves: the preset's training flags (epochs, lr_tab, benchmark)
    are not applied, so neither refused nor recorded; its model flags are."""
    main = import_main()
    cfg = main.parse_args(["--preset", "P-conv", "--action", "plotcurves"])
    assert not {"epochs", "lr_tab", "benchmark"} & set(cfg.explicit)
    assert cfg.epochs == 1 and cfg.benchmark is False and cfg.C_tab == [64, 32, 1] and cfg.T == 200
    import experiment
    assert experiment.ignored_flags(cfg) == []


def test_results_dir_that_cannot_be_created_is_one_line(tmp_path, capsys):
    main = import_main()
    bad = tmp_path / ("x" * 300)  # a name longer than the file system allows: mkdir fails
    code = main.main(TOY_ARGV + ["--action", "plotcurves", "--results-dir", str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert "cannot create the result folder" in err
    assert list(tmp_path.iterdir()) == []


def test_validate_returns_the_canonical_method():
    """A Config made in code (config.preset_config) carries the original's default spelling "eqprop";
    the validated Config that experiment.run trains with says EP, the name training dispatches on."""
    import config
    import experiment
    cfg = config.preset_config("P-1h", seed=1)
    assert cfg.training_method == "eqprop"
    assert experiment.validate(cfg).training_method == "EP"
    with pytest.raises(experiment.UsageError, match="--training-method must be one of"):
        experiment.validate(cfg.replace(training_method="backprop"))
