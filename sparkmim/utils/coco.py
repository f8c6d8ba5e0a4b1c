"""Reading a COCO instances file's categories (shared by the Detectron2 and MMDetection commands)."""
import json
from pathlib import Path
from typing import List

from sparkmim.utils.errors import UserError


class CocoFileError(UserError, ValueError):
    """The file is not a readable COCO instances json with categories."""


def read_coco_categories(json_file: Path) -> List[dict]:
    """The ``categories`` of a COCO instances json, sorted by id: the order in which both Detectron2
    and MMDetection's CocoDataset number the classes."""
    try:
        data = json.loads(Path(json_file).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CocoFileError(f"cannot read COCO json {json_file}: {error}") from error
    categories = data.get("categories") if isinstance(data, dict) else None
    if not categories:
        raise CocoFileError(f"{json_file} has no 'categories': not a COCO instances file")
    return sorted(categories, key=lambda category: category["id"])
