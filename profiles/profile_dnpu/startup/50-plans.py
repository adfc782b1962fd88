# Plans: RE(hge_gradient(dnpu)), RE(train(dnpu, BooleanGate("XOR"))), ...
from dnpu_bluesky.plans import *  # noqa: F403
from dnpu_bluesky.results import final_scores, trained_setting  # noqa: F401
from dnpu_bluesky.session import annotate_plans_for_queue_server
from dnpu_bluesky.tasks import GATES, BooleanGate, SphereClassification  # noqa: F401

# Under the queue server: device and gate names are checked when a plan is submitted.
annotate_plans_for_queue_server(globals())
