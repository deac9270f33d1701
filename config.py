"""One experiment = one Config.  The paper's commands as presets, defined once (main.py and bench.py
both use them), and the prototypical step-size rule, once.

Flags keep the original's names, meanings and defaults, except --device-label (default -1, CPU) and
the fixes listed under "Deviations" in the README.
"""
import dataclasses
from dataclasses import dataclass, field

ACTIONS = ("train", "plotcurves", "receipe")
METHODS = {"eqprop": "EP", "EP": "EP", "BPTT": "BPTT"}  # accepted spellings -> canonical
ACTIVATION_NAMES = ("sigm", "hardsigm", "tanh")
NUDGINGS = ("one-sided", "symmetric", "random-sign")  # the first is the paper's and the default


@dataclass
class Config:
    """Every setting of a run; field names are the original's flag names (argparse dests)."""
    # optimisation
    batch_size: int = 20
    test_batch_size: int = 1000
    epochs: int = 1
    lr_tab: list = field(default_factory=lambda: [0.05, 0.1])
    training_method: str = "eqprop"
    benchmark: bool = False
    # network
    size_tab: list = field(default_factory=lambda: [10])
    discrete: bool = False
    dt: float = 0.2
    T: int = 100
    Kmax: int = 25
    beta: float = 1.0
    nudging: str = "one-sided"
    activation_function: str = "sigm"
    no_clamp: bool = False
    toymodel: bool = False
    C_tab: list = field(default_factory=list)
    padding: int = 0
    Fconv: int = 5
    Fpool: int = 2
    # others
    action: str = "train"
    device_label: int = -1
    threads: int = None
    seed: int = None
    data_dir: str = "./data"
    results_dir: str = "./results"
    train_subset: int = None
    test_subset: int = None
    trials: int = 20
    resume: str = None
    quiet: bool = False
    preset: str = None
    list_presets: bool = False
    explicit: list = field(default_factory=list)  # the flags set by the command line or the preset

    @property
    def kind(self):
        return "toy" if self.toymodel else "conv" if self.C_tab else "fc"

    @property
    def n_weight_layers(self):
        if self.kind == "toy":
            return 3
        if self.kind == "conv":
            return len(self.size_tab) + len(self.C_tab) - 1
        return len(self.size_tab) - 1

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


FIELDS = tuple(f.name for f in dataclasses.fields(Config))
DEFAULTS = Config()
_SPELLED_AS_FIELD = ("lr_tab", "size_tab", "C_tab", "T", "Kmax", "Fconv", "Fpool")  # the original's spelling


def flag_name(field_name):
    """The command-line flag of a Config field, as main.py spells it first (--lr_tab, --batch-size)."""
    return "--" + (field_name if field_name in _SPELLED_AS_FIELD else field_name.replace("_", "-"))


def paper_dt(cfg):
    """The step-size rule (Deviation 1): the prototypical model (--discrete) has no Euler step and
    the conv net always steps by 1, so dt = 1 for both unless --dt is given explicitly (the conv net
    then refuses any other value: experiment.validate)."""
    if (cfg.C_tab or cfg.discrete) and "dt" not in cfg.explicit:
        return cfg.replace(dt=1.0)
    return cfg


# ------------------------------------------------------------------------------------------------
# Presets: one per command of the original README.  A preset sets the flags of its command; flags
# given on the command line win.

@dataclass(frozen=True)
class Preset:
    title: str
    flags: dict  # Config field -> value


_EB_FIG = dict(action="plotcurves", no_clamp=True, activation_function="tanh", dt=0.08)
_P_FIG = dict(action="plotcurves", discrete=True, activation_function="tanh")
_CONV_FIG = dict(action="plotcurves", size_tab=[10], C_tab=[64, 32, 1], activation_function="hardsigm",
                 beta=0.02, T=5000, Kmax=10)
_EB1 = dict(size_tab=[10, 512, 784], beta=0.001, T=800, Kmax=80)
_EB2 = dict(size_tab=[10, 512, 512, 784], beta=0.01, T=5000, Kmax=150)
_EB3 = dict(size_tab=[10, 512, 512, 512, 784], beta=0.02, T=30000, Kmax=200)
_P1 = dict(size_tab=[10, 512, 784], beta=0.01, T=150, Kmax=10)
_P2 = dict(size_tab=[10, 512, 512, 784], beta=0.01, T=1500, Kmax=40)
_P3 = dict(size_tab=[10, 512, 512, 512, 784], beta=0.015, T=5000, Kmax=40)

PRESETS = {
    # Table 1 (training, all with --benchmark: EP and BPTT from the same initial weights)
    "EB-1h": Preset("Table 1, EB-1h", dict(action="train", size_tab=[10, 512, 784], lr_tab=[0.05, 0.1], epochs=30,
                                           T=100, Kmax=12, beta=0.5, dt=0.2, benchmark=True)),
    "EB-2h": Preset("Table 1, EB-2h", dict(action="train", size_tab=[10, 512, 512, 784], lr_tab=[0.01, 0.1, 0.4],
                                           epochs=50, T=400, Kmax=40, beta=0.5, dt=0.2, benchmark=True)),
    "P-1h": Preset("Table 1, P-1h", dict(action="train", discrete=True, size_tab=[10, 512, 784], lr_tab=[0.04, 0.08],
                                         epochs=30, T=40, Kmax=15, beta=0.1, benchmark=True)),
    "P-1h-T30K10": Preset("Table 1, P-1h with T 30, K 10", dict(
        action="train", discrete=True, size_tab=[10, 512, 784], lr_tab=[0.04, 0.08], epochs=30, T=30, Kmax=10,
        beta=0.1, benchmark=True)),
    "P-2h": Preset("Table 1, P-2h", dict(action="train", discrete=True, size_tab=[10, 512, 512, 784],
                                         lr_tab=[0.005, 0.05, 0.2], epochs=50, T=100, Kmax=20, beta=0.5,
                                         benchmark=True)),
    "P-3h": Preset("Table 1, P-3h", dict(action="train", discrete=True, size_tab=[10, 512, 512, 512, 784],
                                         lr_tab=[0.002, 0.01, 0.05, 0.2], epochs=100, T=180, Kmax=20, beta=0.5,
                                         benchmark=True)),
    "P-conv": Preset("Table 1, P-conv", dict(action="train", activation_function="hardsigm", C_tab=[64, 32, 1],
                                             size_tab=[10], lr_tab=[0.015, 0.035, 0.15], epochs=40, T=200, Kmax=10,
                                             beta=0.4, benchmark=True)),
    # GDU figures (plotcurves)
    "fig2-toy": Preset("Fig. 2, toy model (EB)", dict(_EB_FIG, toymodel=True, batch_size=1, size_tab=[10, 50, 5],
                                                      beta=0.01, T=5000, Kmax=80)),
    "fig3-EB-1h": Preset("Fig. 3, EB-1h", dict(_EB_FIG, batch_size=20, **_EB1)),
    "fig3-EB-2h": Preset("Fig. 3, EB-2h", dict(_EB_FIG, batch_size=20, **_EB2)),
    "fig3-EB-3h": Preset("Fig. 3, EB-3h", dict(_EB_FIG, batch_size=20, **_EB3)),
    "fig3-P-1h": Preset("Fig. 3, P-1h", dict(_P_FIG, batch_size=20, **_P1)),
    "fig3-P-2h": Preset("Fig. 3, P-2h (batch 1 as in the README)", dict(_P_FIG, batch_size=1, **_P2)),
    "fig3-P-3h": Preset("Fig. 3, P-3h (batch 1 as in the README)", dict(_P_FIG, batch_size=1, **_P3)),
    "fig4-conv": Preset("Fig. 4, conv GDU", dict(_CONV_FIG, batch_size=1)),
    "fig8-EB-1h": Preset("App. C.2.1 Fig. 8", dict(_EB_FIG, batch_size=1, **_EB1)),
    "fig9-EB-2h": Preset("App. C.2.1 Fig. 9", dict(_EB_FIG, batch_size=1, **_EB2)),
    "fig10-EB-3h": Preset("App. C.2.1 Fig. 10", dict(_EB_FIG, batch_size=1, **_EB3)),
    "fig11-P-1h": Preset("App. C.2.2 Fig. 11", dict(_P_FIG, batch_size=1, **_P1)),
    "fig12-P-2h": Preset("App. C.2.2 Fig. 12", dict(_P_FIG, batch_size=1, **_P2)),
    "fig13-P-3h": Preset("App. C.2.2 Fig. 13", dict(_P_FIG, batch_size=1, **_P3)),
    "fig16-conv": Preset("App. D Fig. 16, conv RMSE", dict(_CONV_FIG, batch_size=20)),
}
TABLE1 = ("EB-1h", "EB-2h", "P-1h", "P-2h", "P-3h", "P-conv")  # the paper's six rows


def preset_config(name, **overrides):
    """The Config of a preset with the dt rule applied (what `main.py --preset name` would run,
    minus the command-line-only fields).  overrides win over the preset."""
    flags = {**PRESETS[name].flags, **overrides}
    return paper_dt(Config(**flags, preset=name, explicit=sorted(flags)))
