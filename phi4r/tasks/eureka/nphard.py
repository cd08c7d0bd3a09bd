"""3SAT and TSP in Eureka: the last `<final_answer>` block, checked against the data set's lists of
optimal solutions.

SAT follows data_utils/nphard_sat_utils.py (parse_assignment_from_model_output) and
metrics/nphard_sat_metrics.py (NPHardSATMetric); TSP follows data_utils/nphard_tsp_utils.py
(parse_path_from_model_output) and metrics/nphard_tsp_metrics.py (NPHardTSPMetric).
"""
from __future__ import annotations

import ast
import json
import re
from itertools import pairwise

import numpy as np

from ..base import Instance, Judge, Score, final_text
from . import with_fallback

NO_SAT_ANSWER = "-1"  # Eureka's "not extracted" value for SAT (also what a malformed answer gives)
NO_TOUR = "0,0,0,0"  # ... and for TSP


def sat_final_answer(text: str) -> str | None:
    """extract_final_answer: the block that starts at the last `<final_answer>`."""
    last_open = text.rfind("<final_answer>")
    if last_open == -1:
        return None
    matches = re.findall(r"<final_answer>(.*?)</final_answer>", text[last_open:], re.DOTALL)
    return matches[-1] if matches else None


def sat_solution(final_answer: str):
    """extract_solution: the block must be a Python literal dict with a `Solution` key, so a bare
    `Unsatisfiable` (no dict) is no answer."""
    try:
        parsed = ast.literal_eval(final_answer)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return None
    try:
        return parsed.get("Solution")
    except AttributeError:
        return None


def parse_sat(text: str) -> str:
    """parse_assignment_from_model_output: "" for Unsatisfiable, "1,0,..." for exactly True/False
    tokens, "-1" otherwise."""
    if not text.strip():
        return NO_SAT_ANSWER
    final_answer = sat_final_answer(text)
    if not final_answer:
        return NO_SAT_ANSWER
    solution = sat_solution(final_answer)
    if not solution:
        return NO_SAT_ANSWER
    if solution == "Unsatisfiable":
        return ""
    if not isinstance(solution, str):  # convert_to_binary_string
        return NO_SAT_ANSWER
    parts = [p.strip() for p in solution.split(",")]
    if not all(p in ("True", "False") for p in parts):
        return NO_SAT_ANSWER
    return ",".join("1" if p == "True" else "0" for p in parts)


def all_models(n: int, clauses: list[list[int]]) -> list[str]:
    """Every satisfying assignment as "1,0,..." (x1 first): the solution list of a generated
    instance (Eureka's data set lists its instances' satisfying assignments)."""
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    ok = np.ones(2**n, dtype=bool)
    for clause in clauses:
        ok &= np.any([bits[:, abs(lit) - 1] == (lit > 0) for lit in clause], axis=0)
    return [",".join(map(str, row)) for row in bits[ok]]


def sat_correct(solutions: list, assignment: str) -> bool:
    """NPHardSATMetric.is_assignment_optimal: "" against an empty list (unsatisfiable), else exact
    membership once spaces and parentheses are dropped from the list's entries. An entry is
    Eureka's "(1, 0, 1)" string or, as phi4r's loader stores it, a list of bools."""
    if assignment == "" and not solutions:
        return True
    solutions = [s if isinstance(s, str) else ",".join("1" if v else "0" for v in s) for s in solutions]
    return assignment in [",".join(s.replace(" ", "").strip("()").split(",")) for s in solutions]


def check_sat(inst: Instance, response: str, solutions: list[str], judge: Judge | None = None) -> Score:
    details: dict = {}
    got = with_fallback(parse_sat, NO_SAT_ANSWER, inst, response, judge, details)
    return Score(float(sat_correct(solutions, got)), got, details)


def tsp_path(final_answer: str):
    """extract_path: JSON after turning every ' into ", else a regex that wants double quotes."""
    try:
        return json.loads(final_answer.replace("'", '"')).get("Path", None)
    except json.JSONDecodeError:
        match = re.search(r'"Path":\s*"([^"]+)"', final_answer)
        return match.group(1) if match else None


def parse_tsp(text: str) -> str:
    """parse_path_from_model_output: the last `<final_answer>` block's Path as "0,3,1,...,0", its
    digits and arrows kept and everything else dropped; "0,0,0,0" when there is none."""
    matches = re.findall(r"<final_answer>(.*?)</final_answer>", text, flags=re.DOTALL)
    try:
        tour_string = tsp_path(matches[-1]) if matches else None
        if tour_string is None:
            return NO_TOUR
        tour = list(map(int, "".join(re.findall(r"\d+|->", tour_string)).split("->")))
    except (AttributeError, ValueError, TypeError):
        return NO_TOUR
    return ",".join(map(str, tour))


def tsp_correct(dist, optimal: int, tour_string: str, optimal_tours: list | None) -> bool:
    """NPHardTSPMetric: a valid tour (n + 1 cities, closed, each city once) of the optimal length,
    found in the data set's list of optimal tours. The stated TotalDistance is not read.

    A generated instance has no list; it stands for every optimal tour from city 0 (each listed
    tour starts where the prompt's tours start), so there a tour from 0 of optimal length passes."""
    tour = list(map(int, tour_string.split(",")))
    cities = list(range(len(dist)))
    if len(tour) != len(cities) + 1 or tour[0] != tour[-1] or set(tour[:-1]) != set(cities):
        return False
    if sum(dist[a][b] for a, b in pairwise(tour)) != optimal:
        return False
    if optimal_tours is None:
        return tour[0] == 0
    if isinstance(optimal_tours, str):  # the data set's column is a Python literal, read with eval
        optimal_tours = ast.literal_eval(optimal_tours.strip("."))
    # Eureka lists open tours and closes each; phi4r's loader stores them closed already.
    return tour_string in [",".join(map(str, t if t[0] == t[-1] else (*t, t[0]))) for t in optimal_tours]


def check_tsp(inst: Instance, response: str, dist, optimal: int, optimal_tours: list | None = None) -> Score:
    text = final_text(response)
    got = parse_tsp(text) if text is not None else NO_TOUR
    return Score(float(tsp_correct(dist, optimal, got, optimal_tours)), got, {})
