"""jaxtune."""
