"""The 11 face-parsing labels (the paper's, after Helen): one table for the labeller, the network and
the scores. Index = label id in label maps and class index of the parsing network's output."""

LABELS = ("background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
          "upper_lip", "inner_mouth", "lower_lip", "hair")
