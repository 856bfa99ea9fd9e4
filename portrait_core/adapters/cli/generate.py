"""`python -m portrait_core generate`: portraits of trained identities from template photos."""

from __future__ import annotations

import argparse
import time

from portrait_core.generate.results import save_results
from portrait_core.params import GenerateParams
from portrait_core.prepare.photos import load_photo
from portrait_core.services.runtime import standalone_services


def run_generate_command(args: argparse.Namespace) -> int:
    options = {"steps": "first_pass_steps", "crop_size": "crop_size"}
    extra = {field: getattr(args, flag) for flag, field in options.items() if getattr(args, flag) is not None}
    params = GenerateParams(identities=[name.strip() for name in args.identities.split(",") if name.strip()],
                            seed=args.seed, batch=args.batch, prompt=args.prompt, **extra)
    templates = [(path.name, _template_image(path)) for path in args.template]
    if args.base_model is None:
        print("No --base-model given: using the tiny local model, which shows the pipeline, not a likeness.")
    from portrait_core.adapters.cli.main import workspace_of

    services = standalone_services(workspace_of(args), args.base_model)
    started = time.perf_counter()
    try:
        outputs = services.generation.generate(params, templates)
    finally:
        services.close()
    results_file = save_results(outputs, args.out)
    for result, _ in outputs:
        scores = ", ".join(f"{f.identity} {'n/a' if f.identity_score is None else f'{f.identity_score:.3f}'}"
                           for f in result.faces)
        print(f"{result.template} seed {result.seed}: identity {scores} ({result.seconds:.1f} s)")
        for note in result.notes:
            print(f"  note: {note}")
    print(f"{len(outputs)} portrait(s) in {time.perf_counter() - started:.1f} s; see {results_file}")
    return 0


def _template_image(path):
    from PIL import Image

    return Image.fromarray(load_photo(path).pixels)
