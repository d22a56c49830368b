"""
Every row of the comparison harness, ours and ART's, one module per method. Each module registers attacks and/or
defences with :func:`art_backdoor_ext.evaluation.api.register_attack` /
:func:`~art_backdoor_ext.evaluation.api.register_defence`, and imports only the plug-in API
(:mod:`art_backdoor_ext.evaluation.api`) and the layers below it. The runner
(:mod:`art_backdoor_ext.evaluation.runner`) imports every module here explicitly.
"""
