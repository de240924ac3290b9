"""The config checked in one round: every schema violation, every non-finite number and every problem of the plan,
listed together (Snakemake's `validate` stops at the first schema error, and a plan problem used to wait for the
schema to pass)."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator, validators

from taskalign.plan.experiment import Plan, PlanError


def _filling_defaults(validator_class):
    """The validator, filling each object's missing keys with the schema's defaults as it goes (as Snakemake's
    `validate` does: python-jsonschema FAQ)."""
    validate_properties = validator_class.VALIDATORS["properties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, subschema["default"])
        yield from validate_properties(validator, properties, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults})


def _non_finite(value, where: str) -> list[str]:
    """`key: nan is not a finite number` for every NaN or infinity (YAML .nan, .inf), which no bound refuses."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"{where}: {value} is not a finite number"]
    if isinstance(value, dict):
        return [p for key, item in value.items() for p in _non_finite(item, f"{where}.{key}" if where else str(key))]
    if isinstance(value, list):
        return [p for n, item in enumerate(value) for p in _non_finite(item, f"{where}[{n}]")]
    return []


def _where(path) -> str:
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    return text or "(top level)"


def config_problems(config: dict, schema_path: str | Path) -> list[str]:
    """Every problem of `config` (defaults filled in place), each as `key: what is wrong`."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _filling_defaults(Draft202012Validator)(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.absolute_path])
    problems = [f"{_where(e.absolute_path)}: {e.message}" for e in errors] + _non_finite(config, "")
    try:
        Plan(config)
    except PlanError as error:
        problems += [p for p in error.problems if p not in problems]
    except (KeyError, TypeError, ValueError, AttributeError):
        if not problems:
            raise  # a config the schema accepts must make a plan
        # else: the schema's problems explain why the plan cannot be made
    return problems


def checked_plan(config: dict, schema_path: str | Path) -> Plan:
    """The plan of a valid config (defaults filled in place); PlanError listing every problem otherwise."""
    problems = config_problems(config, schema_path)
    if problems:
        raise PlanError(problems)
    return Plan(config)
