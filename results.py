"""Result folders and the files in them: createPath, hyperparameters.txt,
config.json, results.json, checkpoint.pt, curves.npz.  Every file is written through one atomic
helper, so an interrupted run never leaves a half-written file."""
import datetime
import json
import os
import platform
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
# copied into every result folder: `cd FOLDER && python plotFunctions.py` redraws its figures
FOLDER_SCRIPTS = ("plotFunctions.py", "metrics.py")


def atomic_write(path, write):
    """write(f) fills a temporary binary file beside `path`; it is synced, then renamed over path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode()))


def write_json(path, obj):
    atomic_write_text(path, json.dumps(obj, indent=1) + "\n")


class ResultError(Exception):
    """A result folder's file is missing, damaged or not this program's (one line)."""


CHECKPOINT_KEYS = ("epoch", "net", "net_bptt", "results")


def save_checkpoint(path, epoch, net, net_bptt, results):
    """checkpoint.pt after a finished epoch: the nets' weights and the results so far."""
    obj = dict(epoch=epoch, net=net.state_dict(), net_bptt=None if net_bptt is None else net_bptt.state_dict(),
               results=results)
    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path):
    """The dict save_checkpoint wrote; ResultError if it is missing, damaged or not ours."""
    path = Path(path)
    if not path.is_file():
        raise ResultError(f"not a result folder (needs config.json and {path.name})")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if not (isinstance(ck, dict) and {"epoch", "net", "results"} <= set(ck)):
            raise KeyError
    except Exception:
        raise ResultError(f"{path.name} is damaged or not this program's")
    return ck


def read_run_config(folder):
    """The Config fields (a dict) of the run in folder, from its config.json."""
    from config import FIELDS
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise ResultError("not a result folder (needs config.json and checkpoint.pt)")
    try:
        saved = json.loads(path.read_text())["args"]
        if not isinstance(saved, dict) or not set(FIELDS) - {"threads", "nudging"} <= set(saved):
            raise TypeError
    except (ValueError, KeyError, TypeError, OSError):
        raise ResultError("config.json is not this program's")
    return saved


def record_resume(folder, cfg):
    """After validation and data loading: the new epoch target goes into config.json and
    hyperparameters.txt (an interrupted extension keeps its target), and the resume itself, with
    how it runs, is appended to config.json's "resumed" list."""
    folder = Path(folder)
    rec = json.loads((folder / "config.json").read_text())
    rec["args"]["epochs"] = cfg.epochs
    rec.setdefault("resumed", []).append(dict(
        at=datetime.datetime.now().isoformat(timespec="seconds"), epochs=cfg.epochs,
        device_label=cfg.device_label, threads=cfg.threads, quiet=cfg.quiet, data_dir=cfg.data_dir))
    write_json(folder / "config.json", rec)
    hp = folder / "hyperparameters.txt"
    if hp.is_file():  # the header keeps the run's start date; the list is written anew from cfg
        head = hp.read_text().split("\n", 1)[0]
        body = hyperparameter_text(model_name(cfg), cfg).split("\n", 1)[1]
        atomic_write_text(hp, head + "\n" + body)


def save_curves(path, nS, dS, NT, DT):
    """curves.npz: nS_n, dS_n, NT_l, DT_l as float arrays (no pickle); numpy arrays or tensors."""
    def np_(t):
        return t.cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    arrs = {}
    for n, (a, b) in enumerate(zip(nS, dS)):
        arrs[f"nS_{n}"], arrs[f"dS_{n}"] = np_(a), np_(b)
    for l, (a, b) in enumerate(zip(NT, DT)):
        arrs[f"NT_{l}"], arrs[f"DT_{l}"] = np_(a), np_(b)
    # uncompressed: gradients barely compress, and EB-3h holds ~1.5 GB
    atomic_write(Path(path) / "curves.npz", lambda f: np.savez(f, **arrs))


# ------------------------------------------------------------------------------------------------

def model_name(cfg):
    """The original's names; a nudging other than the paper's one-sided is appended."""
    if cfg.toymodel:
        name = "ep_cont_toymodel"
    elif cfg.C_tab:
        name = "ep_conv"
    else:
        name = f"ep_{'disc' if cfg.discrete else 'cont'}_{len(cfg.size_tab) - 2}hidden"
    return name if cfg.nudging == "one-sided" else f"{name}_{cfg.nudging}"


def device_tag(cfg):
    return "cpu" if cfg.device_label < 0 else f"cuda{cfg.device_label}"


def createPath(cfg, results_dir="results", date=None):
    """results/<name>/<device>-<date>/Trial-<k>/ for train, results/<name>/Trial-<k>/ otherwise.
    k = 1 + the largest existing trial number (correct past 9); a folder is never reused."""
    name = model_name(cfg)
    parent = Path(results_dir) / name
    if cfg.action == "train":
        parent = parent / f"{device_tag(cfg)}-{date or datetime.date.today().isoformat()}"
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        ks = [int(m.group(1)) for e in os.listdir(parent) if (m := re.fullmatch(r"Trial-(\d+)", e))]
        path = parent / f"Trial-{max(ks, default=0) + 1}"
        try:
            path.mkdir()  # exclusive: two runs can never share a folder
            break
        except FileExistsError:
            continue
    for f in FOLDER_SCRIPTS:
        shutil.copy(HERE / f, path / f)
    return path, name


def hyperparameter_text(name, cfg):
    """hyperparameters.txt in the original's format."""
    if cfg.action == "train":
        head = f" TRAINING: list of hyperparameters ({name}, {device_tag(cfg)}-{datetime.date.today().isoformat()}) "
    else:
        head = f" NABLA-DELTA CURVES: list of hyperparameters ({name}) "
    lines = [head, f"- T: {cfg.T}", f"- Kmax: {cfg.Kmax}", f"- beta: {cfg.beta:.3f}",
             f"- batch size: {cfg.batch_size}", f"- activation function: {cfg.activation_function}"]
    if cfg.action == "train":
        lines += [f"- number of epochs: {cfg.epochs}", f"- learning rates: {cfg.lr_tab}"]
    if not cfg.discrete or cfg.dt != 1.0:  # an explicit --dt with --discrete is recorded too
        lines.append(f"- dt: {cfg.dt:.3f}")
    if cfg.C_tab:
        lines += [f"- channel sizes: {cfg.C_tab}", f"- classifier sizes: {cfg.size_tab}",
                  f"- filter size: {cfg.Fconv}", f"- padded layers: {'yes !' if cfg.padding else 'no'}"]
    else:
        lines.append(f"- layer sizes: {cfg.size_tab}")
    if cfg.nudging != "one-sided":
        lines.append(f"- nudging: {cfg.nudging}")
    return "\n".join(lines) + "\n"


def createHyperparameterfile(path, name, cfg):
    atomic_write_text(Path(path) / "hyperparameters.txt", hyperparameter_text(name, cfg))


def torchvision_version():
    """torchvision.__version__ (with its local tag, e.g. +cu130) read from its version.py: importing
    torchvision costs ~1 s of start-up, and nothing else in a run needs it."""
    import importlib.util
    spec = importlib.util.find_spec("torchvision")
    path = Path(spec.submodule_search_locations[0]) / "version.py"
    m = re.search(r"^__version__ = ['\"]([^'\"]+)['\"]", path.read_text(), re.M)
    return m.group(1) if m else "unknown"


def config_record(cfg, device, argv):
    """config.json's content: every resolved setting, the seed, the command line, versions, device."""
    import dataclasses
    args = dataclasses.asdict(cfg)
    if args["nudging"] == "one-sided":  # recorded only where it is not the paper's (the default)
        del args["nudging"]
    return dict(args=args, seed=cfg.seed, command=" ".join([Path(argv[0]).name] + argv[1:]),
                versions=dict(python=platform.python_version(), torch=torch.__version__,
                              torchvision=torchvision_version()),
                device=str(device), device_name=(torch.cuda.get_device_name(device) if device.type == "cuda"
                                                 else platform.processor() or platform.machine()),
                threads=torch.get_num_threads(),
                started=datetime.datetime.now().isoformat(timespec="seconds"))


def write_config(path, cfg, device, argv=None):
    write_json(Path(path) / "config.json", config_record(cfg, device, sys.argv if argv is None else argv))
