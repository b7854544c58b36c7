# Decides whether the CUDA backend is built and, if so, defines the nudge_cuda target from kernels/.
set(NUDGE_HAVE_CUDA OFF)
if(NOT NUDGE_CUDA STREQUAL "OFF")
  include(CheckLanguage)
  check_language(CUDA)
  set(_nudge_cuda_ok OFF)
  if(CMAKE_CUDA_COMPILER)
    find_package(CUDAToolkit)
    find_path(NUDGE_CUDNN_INCLUDE cudnn.h HINTS ${CUDAToolkit_INCLUDE_DIRS} ENV CUDNN_PATH PATH_SUFFIXES include)
    find_library(NUDGE_CUDNN_LIBRARY cudnn HINTS ${CUDAToolkit_LIBRARY_DIR} ENV CUDNN_PATH PATH_SUFFIXES lib lib64)
    if(CUDAToolkit_FOUND AND TARGET CUDA::cublas AND NUDGE_CUDNN_INCLUDE AND NUDGE_CUDNN_LIBRARY)
      set(_nudge_cuda_ok ON)
    endif()
  endif()
  if(_nudge_cuda_ok)
    set(NUDGE_HAVE_CUDA ON)
  elseif(NUDGE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "NUDGE_CUDA=ON but nvcc, cuDNN or cuBLAS was not found (nvcc: '${CMAKE_CUDA_COMPILER}', cudnn: '${NUDGE_CUDNN_LIBRARY}')")
  endif()
endif()

if(NUDGE_HAVE_CUDA)
  set(CMAKE_CUDA_ARCHITECTURES ${NUDGE_CUDA_ARCHITECTURES})
  enable_language(CUDA)
  set(CMAKE_CUDA_STANDARD 17)
  set(CMAKE_CUDA_STANDARD_REQUIRED ON)
  # Device code (kernels/) and the host code that drives it (host/cuda/) join the nudge_core library.
  file(GLOB NUDGE_CUDA_SOURCES CONFIGURE_DEPENDS ${PROJECT_SOURCE_DIR}/kernels/*.cu
       ${PROJECT_SOURCE_DIR}/kernels/fused/*.cu ${PROJECT_SOURCE_DIR}/host/cuda/*.cpp)
  # -lineinfo: compute-sanitizer and ncu point at source lines (no effect on the code). ptxas warns on any spill.
  string(APPEND CMAKE_CUDA_FLAGS " -lineinfo -Xptxas=-warn-spills")
  # The start-up check compares the device with the architectures compiled in (commas: a CMake list would split).
  string(REPLACE ";" "," _nudge_arch_csv "${NUDGE_CUDA_ARCHITECTURES}")
  set_source_files_properties(${PROJECT_SOURCE_DIR}/host/cuda/cuda_device.cpp PROPERTIES
    COMPILE_DEFINITIONS "NUDGE_CUDA_ARCHITECTURES=\"${_nudge_arch_csv}\"")
  message(STATUS "nudge: CUDA backend ON, architectures ${CMAKE_CUDA_ARCHITECTURES}, cuDNN ${NUDGE_CUDNN_LIBRARY}")
else()
  message(STATUS "nudge: CUDA backend OFF (NUDGE_CUDA=${NUDGE_CUDA})")
endif()
