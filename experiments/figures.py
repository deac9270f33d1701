"""What the experiment figures share: an error-rate axis on a log scale with plain tick labels, and
saving a figure."""
from matplotlib.ticker import FormatStrFormatter


def log_error_axis(ax, **labels):
    """ax.set(**labels) on a log y scale, with "%g" tick labels (2, 3, 5 rather than 2x10^0)."""
    ax.set(yscale="log", **labels)
    ax.grid(alpha=0.3, which="both")
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))


def save(fig, out):
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(out)
