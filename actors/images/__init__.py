"""Input images: checked, transformed and put in the form each provider takes.

- ``presets``: ``Preprocess`` (the steps), the named presets, ``[preprocess]`` settings;
- ``forms``: ``Form`` and ``InputSpec``, what a provider declares it takes;
- ``validate``: size, magic bytes, label, hidden trailing data, pixel cap, safe decode;
- ``resize``, ``enhance``, ``compress``: the steps;
- ``pipeline``: one image through them (blocking: run in a worker thread);
- ``source``: an image's bytes from a ``data:`` URI or through the pinned fetch;
- ``publish``: ``InputPublisher`` and its local implementation (``/media/inputs/``);
- ``inputs``: ``InputPreparer``, what a provider actor calls before each create.

Nothing is imported here, so a provider module can import ``forms`` without
pulling in Pillow.
"""
