"""Media processing: ffprobe facts, MP4 box layout (faststart), previews, faststart remux."""
