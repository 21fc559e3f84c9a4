"""The job server: a REST API over datasets, experiments and jobs, a database that is also the job
queue, and executors that run each job as ``rtdetr <action> -e spec.yaml``.

Start it with ``rtdetr serve``; the modules here need the ``service`` extra
(``pip install "rtdetr[service]"``): FastAPI, uvicorn, SQLAlchemy, httpx, python-multipart and submitit.

- ``settings``: the server's settings and its data folder layout.
- ``db``: the tables (datasets, experiments, jobs) and sessions, SQLite in WAL mode by default.
- ``datasets``: COCO folders and uploaded archives, extracted safely and checked by the toolkit's reader.
- ``specs``: a job's spec: merged, auto-filled, validated, every path kept inside the data folder.
- ``executor``: the Executor interface, the local executor and the scheduler that claims jobs.
- ``slurm``: the Slurm executor (submitit), and submitit's local executor to try it on one machine.
- ``app``: the FastAPI application and ``serve``.
- ``web``: the web page at ``/`` (plain HTML and a script against the API).
- ``client``: ``rtdetr client``, the remote client's commands over httpx (needs httpx only).
"""
