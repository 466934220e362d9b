"""Names that producers and workers must agree on: the queue, the tasks, the Redis streams.

A leaf module (no imports), so that the app, the tasks, the client and the ingest loop can
all import it without importing each other.
"""

from __future__ import annotations

SCORING_QUEUE = "scoring"
# Routing pattern of every nearwatch task (all go to SCORING_QUEUE).
TASK_PATTERN = "nearwatch.*"
SCORE_BATCH = "nearwatch.score_batch"
SCORE_JSON_BATCH = "nearwatch.score_json_batch"
SCORE_MATRIX_BATCH = "nearwatch.score_matrix_batch"

# Redis streams: input and output of `nearwatch ingest`, and the dead letters of the workers.
RECORDS_STREAM = "nearwatch:records"
SCORES_STREAM = "nearwatch:scores"
INGEST_GROUP = "nearwatch"
DEADLETTER_STREAM = "nearwatch:deadletter"
DEADLETTER_MAXLEN = 100_000
# A producer's answer list (worker/answers.py): ANSWERS_PREFIX + a random hex id.
ANSWERS_PREFIX = "nearwatch:answers:"

# Maintenance work (retraining, drift checks, feedback) runs on its own queue, consumed by
# the one `nearwatch beat` node: a retraining never delays scoring batches.
MAINTENANCE_QUEUE = "maintenance"
RETRAIN = "nearwatch.retrain"
DRIFT_CHECK = "nearwatch.drift_check"
FEEDBACK = "nearwatch.feedback"
MAINTENANCE_TASKS = (RETRAIN, DRIFT_CHECK, FEEDBACK)
