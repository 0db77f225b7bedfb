"""Files attnguide writes and reads: atomic writes (one function, one file mode),
checkpoints (format, version, kind), label PNGs with the VOC palette, JSON.

Submodules: ``atomic``, ``checkpoints``, ``labels``.
"""
