"""Pieces every part of the project uses, none of them about the model: crash-safe writes (:mod:`.atomic`),
the one-line usage error (:mod:`.errors`), joining the processes of a run (:mod:`.distributed`), RNG
state (:mod:`.rng`), mixed precision by CPU capability (:mod:`.precision`), the CPU allocator setting
(:mod:`.malloc`), image files (:mod:`.images`), Markdown tables (:mod:`.markdown`) and a quick process
exit (:mod:`.shutdown`). Nothing here imports the model, timm or OpenMMLab."""
