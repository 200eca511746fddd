"""Task packages: recipe -> data -> train -> evaluate -> demo, one package per task."""
