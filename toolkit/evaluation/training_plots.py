"""Former home of the learning-curve and confusion-matrix figures, kept so that bundle configs
importing it keep working: the figures live in :mod:`toolkit.evaluation.figures`; import them from
there (``python -m toolkit.evaluation.figures <output_dir>`` replaces running this module).
"""

from __future__ import annotations

import sys

from toolkit.evaluation.figures import plot_confusion_matrix, plot_run, plot_training_history

__all__ = ["plot_confusion_matrix", "plot_run", "plot_training_history"]

if __name__ == "__main__":
    for made in plot_run(sys.argv[1] if len(sys.argv) > 1 else "."):
        print(made)
