"""Running on one machine with nothing installed: the demo, a private Redis server and the
bundled pretrained models. Like :mod:`sw_core.cli`, this package sits on top of ``producer``
and ``workers`` and may import them; the rest of the library may not import it."""
