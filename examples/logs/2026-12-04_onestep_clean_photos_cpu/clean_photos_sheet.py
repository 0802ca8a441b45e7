"""The sheet beside this script: six crops of held-out photos (seed 1234), given to the models as they are,
each row the photo, then T and R of the shipped model, then T and R of the CPU fine-tune with the `faint` and `none`
recipes. Run from the repository root with the fine-tune's export at the path below."""

import numpy as np
import torch
from PIL import Image

from reflection_separation import ReflectionSeparationPipeline
from reflection_separation.data import SyntheticReflectionDataset

crops = SyntheticReflectionDataset("data/pack_2026-12-02", resolution=256, num_samples=6, seed=1234, split="validation",
                                   validation_fraction=0.15, flip_probability=0.0)
pipes = [ReflectionSeparationPipeline.from_pretrained(folder) for folder in
         ("reflection_separation/default_model", "runs/2026-12-04_onestep_clean_photos_cpu/onestep_fp16")]
rows = []
for index in range(len(crops)):
    photo = crops[index]["transmission"]
    row = [photo.permute(1, 2, 0).numpy()]
    for pipe in pipes:
        pipe.set_progress_bar_config(disable=True)
        out = pipe(photo[None], generator=torch.Generator().manual_seed(0), output_type="np")
        row += [out.transmission[0], out.reflection[0]]
    rows.append(np.concatenate(row, 1))
sheet = Image.fromarray((np.concatenate(rows, 0) * 255).round().astype(np.uint8)).resize((640, 768))
sheet.save("examples/logs/2026-12-04_onestep_clean_photos_cpu/clean_photos_sheet.jpg", quality=85)
