import numpy as np
import pytest
import torch
from PIL import Image

from freelabel.data.captions import CaptionImages, emoji_captions, open_captions, read_pairs
from freelabel.data.loader import batches, collate
from freelabel.data.registry import open_dataset
from freelabel.data.shards import make_shards
from freelabel.data.sources import load_image
from freelabel.errors import DataError


def test_csv_jsonl_and_folder_readers_give_the_same_pairs(captioned):
    from_folder = read_pairs(str(captioned))
    assert len(from_folder) == 30
    assert sorted(from_folder) == sorted(read_pairs(str(captioned / "pairs.csv")))
    assert sorted(from_folder) == sorted(read_pairs(str(captioned / "pairs.jsonl")))
    path, text = from_folder[0]
    assert path.with_suffix(".txt").read_text().strip() == text


def test_caption_splits_partition_the_pairs_and_items_carry_captions(captioned):
    train, test = open_captions(str(captioned), "train", 16), open_captions(str(captioned), "test", 16)
    assert len(train) + len(test) == 30 and len(test) > 0
    assert not set(train.paths) & set(test.paths)
    image, label, text = test[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.uint8
    assert text == test.paths[0].with_suffix(".txt").read_text().strip()
    assert test.classes == ["bag", "sneaker", "trouser"] and test.classes[label] == test.paths[0].parent.name
    assert len(open_dataset(str(captioned / "pairs.csv"), "all", 16)) == 30  # open_dataset dispatches caption data


def test_bad_caption_data_says_what_to_fix(captioned, tmp_path):
    (tmp_path / "bad.csv").write_text("image,label\na.png,1\n")
    with pytest.raises(DataError, match="no 'caption' value; name the column one of: caption, text, title"):
        read_pairs(str(tmp_path / "bad.csv"))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "lonely.png")
    (tmp_path / "other.png").write_bytes((tmp_path / "lonely.png").read_bytes())
    (tmp_path / "other.txt").write_text("a caption")
    with pytest.raises(
        DataError, match="1 images under .* have no caption beside them, e.g. .*lonely.png needs lonely.txt"
    ):
        read_pairs(str(tmp_path))


def test_shards_round_trip(captioned, tmp_path):
    shards = make_shards(str(captioned / "pairs.csv"), tmp_path / "shards", per_shard=8)
    assert [s.name for s in shards] == [f"shard-{i:06d}.tar" for i in range(4)]  # 30 pairs, 8 per shard
    back = open_dataset(str(tmp_path / "shards"), "all", 16)
    items = list(back)
    pairs = dict((t, p) for p, t in read_pairs(str(captioned / "pairs.csv")))
    assert sorted(t for _, _, t in items) == sorted(pairs)
    for image, _, text in items:
        torch.testing.assert_close(image, load_image(pairs[text], 16), atol=0, rtol=0)
    for split in ("train", "test"):  # shards keep the split of the source
        texts = [t for _, _, t in open_dataset(str(tmp_path / "shards/shard-{000000..000003}.tar"), split, 16)]
        assert sorted(texts) == sorted(open_captions(str(captioned), split, 16).texts)
    with pytest.raises(DataError, match="already holds shards"):
        make_shards(str(captioned), tmp_path / "shards")


def test_batches_carry_captions_with_their_images(captioned):
    ds = CaptionImages(torch.arange(6).view(6, 1, 1, 1).to(torch.uint8), torch.full((6,), -1), texts=list("abcdef"))
    for batch in batches(ds, 2, seed=0, epoch=0):
        assert batch.texts == ["abcdef"[i] for i in batch.images.flatten().tolist()]
    files = open_captions(str(captioned), "all", 16)
    batch = collate([files[0], files[5]])
    assert batch.texts == [files.texts[0], files.texts[5]] and batch.images.shape == (2, 3, 16, 16)


@pytest.mark.slow  # decodes the emoji set twice
def test_emoji_captions_name_each_emoji_and_hold_out_whole_emoji():
    test = emoji_captions("test")
    assert len(test) == len(test.texts) == 376
    assert test.texts[0].startswith("an emoji of ")
    names, labels = test.label_sets["subcategory"]
    assert len(names) == 99 and "face smiling" in names and len(labels) == 376
    assert len(test.label_sets["category"][0]) == 10
    assert not set(test.texts) & set(emoji_captions("train").texts)
