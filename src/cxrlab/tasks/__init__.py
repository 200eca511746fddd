"""Task packages: recipe -> data -> train -> evaluate -> cv/ablations -> demo, one per task."""
