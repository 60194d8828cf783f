"""What methods build from: the U-Net and its parts (networks), the loss terms (losses), and targets
derived from the weak box labels (box_targets). Knows no method and no trainer."""
