"""Loads pipeline/airflow_dag.py with a real Airflow (SQLite metadata DB) and runs ``dag.test()``.

A separate process: Airflow reads its configuration and opens its database at import time, so
the test gives it a private AIRFLOW_HOME through the environment. Prints one JSON line:
import errors, each task's upstream tasks, and each task instance's final state.
"""

import json
import os
import sys


def main(run: bool) -> None:
    from airflow.models import DagBag
    from airflow.utils import db

    db.initdb()
    dag_file = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "pipeline", "airflow_dag.py")  # fmt: skip
    bag = DagBag(dag_folder=dag_file, include_examples=False)
    out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "dags": sorted(bag.dag_ids)}
    if bag.dag_ids:
        dag = bag.get_dag(bag.dag_ids[0])
        out["schedule"] = str(dag.schedule_interval)
        out["upstream"] = {task.task_id: sorted(task.upstream_task_ids) for task in dag.tasks}
        if run:
            dag_run = dag.test()
            out["states"] = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
            out["run_state"] = str(dag_run.state)
    print(json.dumps(out))


if __name__ == "__main__":
    main(run="--run" in sys.argv)
