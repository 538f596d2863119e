"""Where the jobs run: the local stack (a Python package only for ``infra.local.stack``), images, manifests."""
