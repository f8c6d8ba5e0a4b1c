"""MMDetection 3.x config files (mmengine style) shipped as package data; they are read by
mmengine's ``Config.fromfile``, never imported. ``sparkmim.downstream_mmdet.settings`` finds them."""
