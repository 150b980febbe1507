"""Loads pipeline/airflow_dag.py with a real Airflow (SQLite metadata DB) and runs ``dag.test()``.

A separate process: Airflow reads its configuration and opens its database at import time, so
the test gives it a private AIRFLOW_HOME through the environment. Prints one JSON line: import
errors, each task's upstream tasks, and per run each task instance's final state.

Arguments are steps, done in order: ``run`` (one ``dag.test()``, a day after the one before, as
the scheduler would start them) and ``link:SOURCE=DEST`` (a new span arrives: DEST becomes a
symbolic link to SOURCE), so that one process runs a schedule with data arriving between runs.
"""

import datetime
import json
import os
import sys


def main(steps) -> None:
    from airflow.models import DagBag
    from airflow.utils import db

    db.initdb()
    dag_file = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "pipeline", "airflow_dag.py")  # fmt: skip
    bag = DagBag(dag_folder=dag_file, include_examples=False)
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids)}
    runs = []
    if bag.dag_ids:
        dag = bag.get_dag(bag.dag_ids[0])
        out["schedule"] = str(dag.schedule_interval)
        out["max_active_runs"] = dag.max_active_runs
        out["upstream"] = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
        day = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
        for step in steps:
            if step.startswith("link:"):
                source, dest = step[len("link:") :].split("=", 1)
                os.symlink(source, dest)
                continue
            assert step == "run", step
            dag_run = dag.test(execution_date=day + datetime.timedelta(days=len(runs)))
            states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
            runs.append({"states": states, "run_state": str(dag_run.state)})
    out["runs"] = runs
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
