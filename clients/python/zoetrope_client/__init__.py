"""Python client of the Zoetrope text-to-video service.

    from zoetrope_client import Client
    with Client("scheduler:50051", token="...") as client:
        job = client.submit("a paper boat drifting down a rainy street", width=832, height=480, frames=81)
        for event in client.watch(job.id):
            if event.WhichOneof("kind") == "preview":   # with submit(..., preview_every=5)
                save_preview(event, "previews")         # previews/step-005.jpg, ...
        client.fetch(job.id, "boat.mp4")   # resumes a partial download, checks SHA-256
"""

from zoetrope_client.client import Client, ChecksumError, TERMINAL_STATES, save_preview  # noqa: F401
