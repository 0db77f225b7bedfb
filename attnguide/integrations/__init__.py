"""attnguide inside the frameworks users already train in.

Submodules (each imports its framework only when imported itself):
    common      the engine's pieces of a run (:func:`build`) and its validation metrics
    lightning   :class:`GuidedModule`, ``attnguide train`` as a LightningModule
                (``pip install 'attnguide[lightning]'``)
    accelerate  :func:`fit`, ``attnguide train``'s loop on a Hugging Face ``Accelerator``
                (``pip install 'attnguide[accelerate]'``)
"""
