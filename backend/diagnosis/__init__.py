"""The diagnosis behind the dashboard: what the model confuses, which labels look wrong, which parts
of the data nobody labeled, and whether new data drifted.

- :mod:`.schema`: the typed diagnosis (pydantic models; their JSON is the diagnosis JSON).
- :mod:`.compute`: the builder, arrays in, :class:`~.schema.Diagnosis` out.
- :mod:`.record`: the cycle's side (inputs from a cycle, atomic save).
- :mod:`.view`: the API's side (load, add links and the learning curve).
- :mod:`.page`: the dashboard page from the Jinja templates in ``templates/``.
"""
