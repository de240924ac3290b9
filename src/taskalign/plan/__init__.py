"""The experiment plan: every job of the DAG and where it writes (experiment.py, layout.py, outputs.py).

Made once from the validated config; the Snakefile, the report and the tests ask it. Light on purpose: the
Snakefile imports it while it builds the DAG, so nothing here imports torch.
"""

from taskalign.plan.experiment import Plan, PlanError

__all__ = ["Plan", "PlanError"]
