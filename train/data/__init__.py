"""Labelled segmentation folders, one job a module.

- `folder`: what an opened folder is (`SegmentationFolder`, `Sample`) and `DataError`;
- `classes`: ``classes.txt`` (class names, ``[thing]`` markers) and the void value;
- `layouts`: finding the samples of a folder (`open_folder`): flat, split, Cityscapes;
- `reading`: validated reading of images, labels and instance maps;
- `sampling`: which classes each image holds, and the k-shot subset.

Labels are single-channel images whose pixel value is the class index; one value (``void``)
marks pixels ignored in losses and metrics. Only numpy, Pillow and tqdm are needed here, so the
package imports without torch.
"""
