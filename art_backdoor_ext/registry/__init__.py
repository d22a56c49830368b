"""
Harness registrations: each module here registers attacks and/or defences with
:func:`art_backdoor_ext.evaluation.register_attack` / :func:`~art_backdoor_ext.evaluation.register_defence`.
They are imported by :func:`art_backdoor_ext.evaluation.run_scenario`, so the harness knows every method by name.
"""
