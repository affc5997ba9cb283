"""Pure: the inode table, each view's tree, names, ctl grammar, renderers, tar."""
