"""Dataset API schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from backend.users.schemas import OWNER

__all__ = ["DatasetCreate", "DatasetRead", "DatasetPage"]


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200, pattern=r"^[\w.\- ]+$")
    train_ann: str = Field(description="COCO JSON of the train split, under an allowed data root")
    val_ann: str = Field(description="COCO JSON of the val split, under an allowed data root")
    train_images: str = Field(description="Folder of the train images")
    val_images: str = Field(description="Folder of the val images")


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    train_ann: str
    val_ann: str
    train_images: str
    val_images: str
    stats: dict[str, Any]
    owner: str | None = OWNER
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetRead]
    total: int
