"""ASL alphabet: one flat folder whose file names carry the label (`A123.jpg`, `del7.jpg`).

`--config.data.path=DIR`; the label is the leading letters of the file name.
"""

from configs import folder


def get_config():
  config = folder.get_config()
  config.data.name = "asl"
  config.data.label_regex = r"^([A-Za-z]+)\d*\."
  # Mirrored hand signs can mean other letters.
  config.augment.flip = False
  return config
