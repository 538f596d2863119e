"""One Ray Train run of a job config, shared by ``jobs.train``, every ``jobs.tune`` trial and ``jobs.register``."""
