"""Load exports with stock open_clip alone, as a user without evaclip would: run by tests/common/export/test_towers.py
as `python -S tests/support/stock_open_clip_load.py SITE_PACKAGES JOB_DIR` from another working directory. `-S` skips
the site hooks, so evaclip's editable install (a .pth hook) stays inert; SITE_PACKAGES gives open_clip, timm
and transformers.

JOB_DIR/job.json: {"texts": [...], "cases": [{"name", "model" ("local-dir:…" or "hf-hub:…"), "image_size"}]};
JOB_DIR/inputs.safetensors: "images_<size>" [N,3,S,S]. Writes JOB_DIR/embeddings.safetensors ("<name>.image",
"<name>.text" unnormalised, "<name>.tokens") and JOB_DIR/report.json: {"errors": {name: "Type: message"},
"evaclip_importable": [...], "evaclip_imported": [...]} (the evaclip packages it could find / did import)."""
import importlib.util
import json
import sys
from pathlib import Path

del sys.path[0]  # this script's folder: tests/ holds a package named `common` (the tests of evaclip's)
sys.path.append(sys.argv[1])
EVACLIP_PACKAGES = ("common", "stage1_mim", "stage2_contrastive")


def main(job_dir: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import load_file, save_file

    job = json.loads((job_dir / "job.json").read_text())
    inputs = load_file(str(job_dir / "inputs.safetensors"))
    report = {"errors": {}, "evaclip_importable": [m for m in EVACLIP_PACKAGES if importlib.util.find_spec(m)]}
    out = {}
    for case in job["cases"]:
        name = case["name"]
        try:
            model, _, _ = open_clip.create_model_and_transforms(case["model"])
            tokens = open_clip.get_tokenizer(case["model"])(job["texts"])
            with torch.no_grad():
                out[f"{name}.image"] = model.eval().encode_image(inputs[f"images_{case['image_size']}"])
                out[f"{name}.text"] = model.encode_text(tokens)
            out[f"{name}.tokens"] = tokens
        except Exception as err:  # noqa: BLE001 - the error a user would see is the result
            report["errors"][name] = f"{type(err).__name__}: {err}"
    report["evaclip_imported"] = sorted({m.split(".")[0] for m in sys.modules} & set(EVACLIP_PACKAGES))
    save_file({k: v.contiguous() for k, v in out.items()}, str(job_dir / "embeddings.safetensors"))
    (job_dir / "report.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(Path(sys.argv[2]))
