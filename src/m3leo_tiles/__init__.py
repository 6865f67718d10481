"""m3leo-tiles: ML-ready Earth-observation chips on an exact global UTM tile grid."""

__version__ = "0.1.0"
